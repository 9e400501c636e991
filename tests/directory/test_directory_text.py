"""Directory text in-process: the service refuses what is not text, nothing is written, and
what an older version stored (written into the database directly) still reads."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from ams.db.models.directory import DirectoryObject
from ams.directory import directories, ldif, objects, restore, snapshots
from ams.directory.entry import Entry, attributes_from_json, decode_values, encode_values
from ams.errors import BadInput, LdifInvalid
from ams.instance import Instance

BASE = "dc=corp,dc=example,dc=com"


def _directory(instance: Instance) -> str:
    d = directories.create(instance, dns_name="corp.example.com", short_name=None, actor="t").id
    objects.add(instance, d, Entry(BASE, ["domain"], {"dc": ["corp"]}), actor="t")
    return d


def _rows(instance: Instance) -> int:
    with instance.session() as session:
        return int(session.scalar(select(func.count()).select_from(DirectoryObject)) or 0)


def test_a_value_that_is_not_text_is_never_stored_as_text() -> None:
    # Even past the check (a caller that skips it), nothing is written that cannot be read.
    stored = encode_values({"a": ["\ud800"], "b": ["x\x00"], "c": [b"\xff"], "d": [b"ok"], "e": ["é"]})
    assert json.loads(stored) == {
        "a": [{"base64": "7aCA"}],
        "b": [{"base64": "eAA="}],
        "c": [{"base64": "/w=="}],
        "d": ["ok"],
        "e": ["é"],
    }
    assert decode_values(stored) == {
        "a": [b"\xed\xa0\x80"],
        "b": [b"x\x00"],
        "c": [b"\xff"],
        "d": ["ok"],
        "e": ["é"],
    }
    # An answer can always be encoded: a write never commits and then fails to answer.
    odd = Entry("cn=\ud800", ["top", "x\udc80"], {"cn": ["\ud800"]})
    assert json.dumps(odd.to_dict(), ensure_ascii=False).encode("utf-8")
    assert odd.to_dict()["dn"] == "cn=\ufffd" and odd.to_dict()["object_classes"] == ["top", "x\ufffd"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry(f"cn=\ud800,{BASE}", ["person"], {}), "the DN holds U+D800"),
        (Entry(f"cn=a\x00,{BASE}", ["person"], {}), "the DN holds a NUL"),
        (Entry(f"cn=a,{BASE}", ["person\x00"], {}), "an objectClass value holds a NUL"),
        (Entry(f"cn=a,{BASE}", ["top"], {"objectClass": [b"\xff"]}), "an objectClass value is binary"),
        (Entry(f"cn=a,{BASE}", ["person"], {"cn": ["\udfff"]}), "a value of attribute cn holds U+DFFF"),
        (Entry(f"cn=a,{BASE}", ["person"], {"cn": ["ok", "a\x00"]}), "a value of attribute cn holds a NUL"),
    ],
)
def test_add_and_import_refuse_it_and_write_nothing(instance: Instance, entry: Entry, message: str) -> None:
    d = _directory(instance)
    before = _rows(instance)
    with pytest.raises(BadInput, match=re.escape(message)):
        objects.add(instance, d, entry, actor="t")
    good = Entry(f"cn=good,{BASE}", ["person"], {"cn": ["good"]})
    with pytest.raises(BadInput, match=re.escape(message)):
        objects.import_entries(instance, d, [good, entry], actor="t")
    assert _rows(instance) == before


def test_modify_refuses_it_and_keeps_the_entry(instance: Instance) -> None:
    d = _directory(instance)
    dn = f"cn=a,{BASE}"
    objects.add(instance, d, Entry(dn, ["person"], {"cn": ["a"], "sn": ["b"]}), actor="t")
    for change in ({"replace": {"sn": ["\ud800"]}}, {"add": {"mail": ["x\x00"]}}):
        with pytest.raises(BadInput, match="nothing was changed"):
            objects.modify(instance, d, dn, actor="t", **change)
    assert objects.get(instance, d, dn).attributes == {"cn": ["a"], "sn": ["b"]}
    # Binary data still travels, as base64.
    photo = attributes_from_json({"photo": {"base64": "AO2ggA=="}})
    assert objects.modify(instance, d, dn, add=photo, actor="t").get("photo") == [b"\x00\xed\xa0\x80"]


def test_a_lookup_by_a_dn_that_is_not_text_is_bad_input(instance: Instance) -> None:
    d = _directory(instance)
    for dn in ("cn=\ud800", "cn=a\x00"):
        with pytest.raises(BadInput, match="the DN holds"):
            objects.get(instance, d, dn)
        with pytest.raises(BadInput, match="the DN holds"):
            objects.list_entries(instance, d, base=dn)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("description", "\ud800", "the description holds U+D800"),
        ("description", "a\x00", "the description holds a NUL"),
        ("short_name", "A\x00B", "the short name holds a NUL"),
        ("short_name", "A\tB", "the short name holds a control character"),
    ],
)
def test_directory_text_is_checked(instance: Instance, field: str, value: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        directories.create(
            instance, **{"dns_name": "x.example.com", "short_name": None, field: value}, actor="t"
        )
    assert directories.list_directories(instance) == []
    made = directories.create(
        instance, dns_name="x.example.com", short_name=None, description="a\tb", actor="t"
    )
    assert directories.get(instance, made.id).description == "a\tb"


def test_legacy_values_read_as_binary_and_the_entry_can_still_change(instance: Instance) -> None:
    d = _directory(instance)
    dn = f"cn=old,{BASE}"
    with instance.transaction() as session:
        session.add(
            DirectoryObject(
                directory_id=d,
                generation=1,
                dn=dn,
                dn_norm=dn,
                object_classes=json.dumps(["person", "p\ud800"]),
                attributes=json.dumps({"cn": ["old"], "note": ["\udc00", "a\x00"]}),
            )
        )
    entry = objects.get(instance, d, dn)
    assert entry.object_classes == ["person", "p\ufffd"]
    assert entry.attributes == {"cn": ["old"], "note": [b"\xed\xb0\x80", b"a\x00"]}
    text = ldif.dump(objects.iter_entries(instance, d))
    assert "note:: 7bCA\nnote:: YQA=\n" in text
    assert list(ldif.parse(text))[1].attributes == entry.attributes
    # A snapshot of it restores to the same reads.
    snapshot = snapshots.create(instance, d, actor="t")
    changed = objects.modify(instance, d, dn, replace={"cn": ["new"]}, actor="t")
    assert changed.attributes == {"cn": ["new"], "note": [b"\xed\xb0\x80", b"a\x00"]}
    snapshots.restore(instance, snapshot.id, actor="t")
    assert restore.run_pending(instance)[0].state == "done"
    assert objects.get(instance, d, dn) == entry


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"dn: cn=a\nobjectClass: top\ncn: a\x00b\n", "line 3: the value of cn holds a NUL character"),
        (b"dn: cn=a\nobjectClass: top\ncn: \xed\xa0\x80\n", "line 3: is not UTF-8 text"),
        (b"dn:: Y249YQA=\nobjectClass: top\n", "line 1: the DN is not text"),
        (b"dn: cn=a\nobjectClass:: 7aCA\n", "line 2: an objectClass value is not text"),
        (b"dn: cn=a\nobjectClass:: dG9wCQ==\n", "line 2: an objectClass value holds a control character"),
    ],
)
def test_ldif_refuses_bad_text_with_the_line(record: bytes, message: str) -> None:
    with pytest.raises(LdifInvalid, match=re.escape(message)):
        list(ldif.parse(record))


def test_ldif_base64_that_is_not_text_stays_binary() -> None:
    (entry,) = ldif.parse(b"dn: cn=a\nobjectClass: top\nphoto:: AO2ggA==\ncn:: w6k=\n")
    assert entry.attributes == {"photo": [b"\x00\xed\xa0\x80"], "cn": ["é"]}


def test_legacy_names_with_control_characters_can_still_be_changed_and_deleted(instance: Instance) -> None:
    # Only new names must be one line: an entry stored before keeps working.
    d = _directory(instance)
    dn = f"cn=tab\there,{BASE}"
    with instance.transaction() as session:
        session.add(
            DirectoryObject(
                directory_id=d,
                generation=1,
                dn=dn,
                dn_norm=dn,
                object_classes=json.dumps(["person\t"]),
                attributes=json.dumps({"cn": ["tab"]}),
            )
        )
    changed = objects.modify(instance, d, dn, add={"sn": ["x"]}, actor="t")
    assert changed.object_classes == ["person\t"] and changed.attributes == {"cn": ["tab"], "sn": ["x"]}
    with pytest.raises(BadInput, match="an objectClass value holds a control character"):
        objects.modify(instance, d, dn, add={"objectClass": ["new\t"]}, actor="t")
    assert objects.delete(instance, d, dn, actor="t").dn == dn
    assert [e.dn for e in objects.list_entries(instance, d)] == [BASE]
