"""LDIF (RFC 2849): parsing edge cases, refusals with line numbers, and writing."""

from __future__ import annotations

import base64

import pytest

from ams.directory import ldif
from ams.directory.entry import Entry
from ams.errors import LdifInvalid


def one(text: str | bytes) -> Entry:
    entries = list(ldif.parse(text))
    assert len(entries) == 1
    return entries[0]


def test_plain_records_version_and_comments() -> None:
    text = (
        "version: 1\n"
        "\n"
        "# a comment\n"
        "#  folded comment\n"
        " still the comment\n"
        "dn: dc=example,dc=com\n"
        "objectClass: top\n"
        "objectclass: domain\n"
        "dc: example\n"
        "\n"
        "\n"
        "dn: cn=Alice,dc=example,dc=com\n"
        "objectClass: person\n"
        "cn: Alice\n"
        "cn:Al\n"
        "sn:   Smith\n"
        "description:\n"
    )
    first, second = list(ldif.parse(text))
    assert first.dn == "dc=example,dc=com"
    assert first.object_classes == ["top", "domain"]
    assert first.attributes == {"dc": ["example"]}
    assert second.attributes == {"cn": ["Alice", "Al"], "sn": ["Smith"], "description": [""]}


def test_folding_joins_continuations_and_crlf() -> None:
    entry = one("dn: cn=Long,dc=ex\r\n ample,dc=com\r\nobjectClass: person\r\ndescription: one\r\n  two\r\n")
    assert entry.dn == "cn=Long,dc=example,dc=com"
    # The first space of a continuation goes; the rest of the line is value.
    assert entry.attributes["description"] == ["one two"]


def test_base64_values_text_and_binary() -> None:
    utf8 = base64.b64encode("Zoë Ångström".encode()).decode()
    binary = base64.b64encode(b"\x00\xff\x10").decode()
    dn = base64.b64encode("cn=Zoë,dc=example,dc=com".encode()).decode()
    entry = one(f"dn:: {dn}\nobjectClass: person\ncn:: {utf8}\nobjectGUID:: {binary}\n")
    assert entry.dn == "cn=Zoë,dc=example,dc=com"
    assert entry.attributes["cn"] == ["Zoë Ångström"]
    assert entry.attributes["objectGUID"] == [b"\x00\xff\x10"]


def test_folded_base64_value() -> None:
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    folded = "\n ".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    entry = one(f"dn: cn=x,dc=ex\nobjectClass: device\nuserCertificate;binary:: {folded}\n")
    assert entry.attributes["userCertificate;binary"] == [raw]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("dn: cn=a,dc=ex\nobjectClass: top\nchangetype: modify\nreplace: cn\n", 3, "change records"),
        ("version: 1\n\ndn: cn=a,dc=ex\nchangetype: add\nobjectClass: top\n", 4, "change records"),
        ("dn: cn=a,dc=ex\nobjectClass: top\njpegPhoto:< file:///etc/passwd\n", 3, "URLs"),
        ("dn: cn=a,dc=ex\nobjectClass: top\ncn:: !!notbase64!!\n", 3, "not valid base64"),
        ("dn: cn=a,dc=ex\nobjectClass: top\nthis line has no colon\n", 3, "attribute: value"),
        ("cn: a\nobjectClass: top\n", 1, "must start with 'dn:'"),
        ("dn: cn=a,dc=ex\ncn: a\n", 1, "no objectClass"),
        (" continued\ndn: x\n", 1, "continuation"),
        ("version: 2\n\ndn: cn=a,dc=ex\nobjectClass: top\n", 1, "version"),
        (
            "dn: cn=a,dc=ex\nobjectClass: top\n\ndn: cn=b,dc=ex\nobjectClass: top\nbad_name: x\n",
            6,
            "attribute name",
        ),
        ("dn: cn=a,dc=ex\nobjectClass: top\ndn: cn=b,dc=ex\n", 3, "second dn"),
    ],
)
def test_bad_input_names_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(LdifInvalid) as caught:
        list(ldif.parse(text))
    assert f"line {line}:" in caught.value.message
    assert words in caught.value.message
    assert "nothing was imported" in caught.value.message
    assert "\n" not in caught.value.message


def test_non_utf8_plain_text_is_refused_with_its_line() -> None:
    with pytest.raises(LdifInvalid, match="line 2: is not UTF-8"):
        list(ldif.parse(b"dn: cn=a,dc=ex\ncn: \xff\xfe\n"))


def test_emit_base64_when_not_safe_and_folds_at_76() -> None:
    long_value = "x" * 200
    entry = Entry(
        "cn=Zoë,dc=example,dc=com",
        ["top", "person"],
        {
            "cn": ["Zoë"],
            "description": [long_value, " leading space", "trailing ", ":colon", "<angle", "two\nlines", ""],
            "photo": [b"\xff\x00"],
        },
    )
    text = ldif.dump([entry], version=True)
    lines = text.splitlines()
    assert lines[0] == "version: 1"
    assert all(len(line) <= 76 for line in lines)
    assert lines[2].startswith("dn:: ")  # not ASCII: base64
    assert "description: " + "x" * 63 in text
    assert "description:" in lines  # the empty value stays plain
    assert "photo:: /wA=" in lines
    # And it reads back to the same entry.
    assert list(ldif.parse(text)) == [entry]


def test_round_trip_of_many_entries() -> None:
    entries = [
        Entry(
            f"cn=user{i},ou=People,dc=example,dc=com",
            ["inetOrgPerson"],
            {"cn": [f"user{i}"], "sn": ["S" * i]},
        )
        for i in range(50)
    ]
    assert list(ldif.parse(ldif.dump(entries, version=False))) == entries
