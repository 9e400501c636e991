"""End to end: text that is not text (lone surrogates, NUL) against a real `ams serve`.

A write refuses it with 422 and changes nothing; every read (list, read, export, the CLI's
export) returns what is stored, including what an older version stored before the check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from ams import apikeys
from ams.apikeys import Role
from ams.db.models.directory import DirectoryObject
from ams.directory import directories, ldif, objects
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

BASE = "dc=corp,dc=example,dc=com"
LEGACY = "dc=legacy,dc=example,dc=com"
OLD = f"cn=old,{LEGACY}"
NUL_DN = f"cn=nul\x00x,{LEGACY}"

# Any character (surrogates are rare among all code points, so they and NUL are added).
CHAR = st.one_of(
    st.characters(exclude_categories=[]),
    st.characters(categories=["Cs"]),
    st.sampled_from("\x00\n\r :<\\,=+#"),
)
TEXT = st.text(CHAR, max_size=10)
NAME = st.one_of(
    TEXT, st.sampled_from(["cn", "description", "mail;lang-en", "1.2.840.113556.1.4.221", "objectClass"])
)


@dataclass
class Served:
    home: Path
    server: Server
    http: httpx.Client
    key_id: str
    secret: str
    directory: str
    legacy: str


def _store_legacy(home: Home) -> str:
    """A directory holding what versions before the text check let in, written directly."""
    instance = open_instance(home)
    try:
        legacy = directories.create(instance, dns_name="legacy.example.com", short_name=None, actor="test").id
        attrs = {"cn": ["old"], "description": ["\ud800"], "note": ["a\x00b"], "sn": [{"base64": "/w=="}]}
        rows = [
            (LEGACY, ["domain"], {"dc": ["legacy"]}),
            (OLD, ["person", "x\udc80"], attrs),
            (NUL_DN, ["person"], {"cn": ["nul"]}),  # SQLite text holds a NUL
        ]
        with instance.transaction() as session:
            for dn, classes, values in rows:
                session.add(
                    DirectoryObject(
                        directory_id=legacy,
                        generation=1,
                        dn=dn,
                        dn_norm=dn.lower(),
                        object_classes=json.dumps(classes),
                        attributes=json.dumps(values),
                    )
                )
    finally:
        instance.close()
    return legacy


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = Home(tmp_path_factory.mktemp("text") / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    instance = open_instance(home)
    try:
        key = apikeys.create(instance, "admin", Role.ADMIN, "test")
        d = directories.create(instance, dns_name="corp.example.com", short_name="CORP", actor="test").id
        objects.import_entries(instance, d, [Entry(BASE, ["domain"], {"dc": ["corp"]})], actor="test")
    finally:
        instance.close()
    legacy = _store_legacy(home)
    with Server(home.root) as server, server.client(key.token) as http:
        yield Served(home.root, server, http, key.info.id, key.secret, d, legacy)


def _post(http: httpx.Client, path: str, body: Any, method: str = "POST") -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, as a hostile client would send it.
    content = json.dumps(body)
    return http.request(method, path, content=content, headers={"Content-Type": "application/json"})


def _entry_path(directory: str, dn: str) -> str:
    return f"/api/v1/directories/{directory}/objects/{quote(dn.encode('utf-8', 'surrogatepass'), safe=',=')}"


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "bad_input" and "\n" not in body["message"]


def _exported(http: httpx.Client, directory: str) -> dict[str, Entry]:
    response = http.get(f"/api/v1/directories/{directory}/export")
    assert response.status_code == 200, response.text
    return {e.dn: e for e in ldif.parse(response.content)}


def test_the_reported_surrogate_is_refused_and_nothing_is_written(served: Served) -> None:
    http, d = served.http, served.directory
    before = http.get(f"/api/v1/directories/{d}/objects").json()
    body = {"dn": f"cn=bad,{BASE}", "object_classes": ["person"], "attributes": {"cn": "\ud800"}}
    refused = _post(http, f"/api/v1/directories/{d}/objects", body)
    _refused(refused)
    assert "attribute cn" in refused.json()["message"] and "U+D800" in refused.json()["message"]
    assert http.get(_entry_path(d, f"cn=bad,{BASE}")).status_code == 404
    assert http.get(f"/api/v1/directories/{d}/objects").json() == before
    assert list(_exported(http, d)) == [BASE]
    described = _post(http, "/api/v1/directories", {"dns_name": "bad.example.com", "description": "\ud800"})
    _refused(described)
    assert "the description" in described.json()["message"]
    assert [x["dns_name"] for x in http.get("/api/v1/directories").json()] == [
        "corp.example.com",
        "legacy.example.com",
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dn": f"cn=a\x00b,{BASE}", "object_classes": ["person"], "attributes": {}}, "the DN"),
        (
            {"dn": f"cn=a,{BASE}", "object_classes": ["person"], "attributes": {"c\x00n": "x"}},
            "attribute name",
        ),
        ({"dn": f"cn=a,{BASE}", "object_classes": ["person"], "attributes": {"cn": "x\x00"}}, "attribute cn"),
        ({"dn": f"cn=a,{BASE}", "object_classes": ["per\x00son"], "attributes": {}}, "objectClass"),
        ({"dn": f"cn=a,{BASE}", "object_classes": ["p\udfff"], "attributes": {}}, "objectClass"),
        (
            {"dn": f"cn=a,{BASE}", "object_classes": ["top"], "attributes": {"objectClass": "\ud800"}},
            "objectClass",
        ),
    ],
)
def test_nul_and_surrogates_in_every_field_are_refused(
    served: Served, body: dict[str, Any], field: str
) -> None:
    http, d = served.http, served.directory
    refused = _post(http, f"/api/v1/directories/{d}/objects", body)
    _refused(refused)
    assert field in refused.json()["message"]
    assert [e["dn"] for e in http.get(f"/api/v1/directories/{d}/objects").json()] == [BASE]


def test_binary_values_still_carry_any_byte(served: Served) -> None:
    http, d = served.http, served.directory
    dn = f"cn=bin,{BASE}"
    raw = b"\x00\xed\xa0\x80\xff"
    body = {
        "dn": dn,
        "object_classes": ["person"],
        "attributes": {"photo": {"base64": base64.b64encode(raw).decode()}},
    }
    assert _post(http, f"/api/v1/directories/{d}/objects", body).status_code == 201
    try:
        assert http.get(_entry_path(d, dn)).json()["attributes"]["photo"] == [
            {"base64": base64.b64encode(raw).decode()}
        ]
        assert _exported(http, d)[dn].attributes["photo"] == [raw]
        # Modify refuses bad text in a value and keeps the entry as it was.
        _refused(_post(http, _entry_path(d, dn), {"add": {"cn": ["\x00"]}}, method="PATCH"))
        assert "cn" not in http.get(_entry_path(d, dn)).json()["attributes"]
    finally:
        assert http.delete(_entry_path(d, dn)).status_code == 200


def test_a_dn_with_control_characters_is_named_in_the_path(served: Served) -> None:
    # Found by the property below: Starlette's path parameter stopped at a line feed, so
    # such an entry was added (201) and then answered 404 to every read, change and delete.
    http, d = served.http, served.directory
    dn = f"cn=two\nlines\tand\x7f,{BASE}"
    body = {"dn": dn, "object_classes": ["person"], "attributes": {"cn": "two\nlines"}}
    assert _post(http, f"/api/v1/directories/{d}/objects", body).status_code == 201
    assert http.get(_entry_path(d, dn)).json()["dn"] == dn
    changed = _post(http, _entry_path(d, dn), {"replace": {"sn": ["x"]}}, method="PATCH")
    assert changed.status_code == 200 and changed.json()["attributes"]["sn"] == ["x"]
    assert _exported(http, d)[dn].attributes == {"cn": ["two\nlines"], "sn": ["x"]}
    assert http.delete(_entry_path(d, dn)).status_code == 200
    assert [e["dn"] for e in http.get(f"/api/v1/directories/{d}/objects").json()] == [BASE]


def test_a_dn_with_nul_in_a_path_or_base_is_refused(served: Served) -> None:
    http, d = served.http, served.directory
    _refused(http.get(_entry_path(d, f"cn=a\x00,{BASE}")))
    _refused(http.get(f"/api/v1/directories/{d}/objects", params={"base": "dc=a\x00"}))
    _refused(http.delete(_entry_path(d, f"cn=a\x00,{BASE}")))


def test_what_an_older_version_stored_still_lists_reads_and_exports(served: Served) -> None:
    http, legacy = served.http, served.legacy
    listed = http.get(f"/api/v1/directories/{legacy}/objects")
    assert listed.status_code == 200, listed.text
    assert [e["dn"] for e in listed.json()] == [LEGACY, OLD, NUL_DN]
    old = http.get(_entry_path(legacy, OLD))
    assert old.status_code == 200, old.text
    expected = {
        "cn": ["old"],
        "description": [{"base64": base64.b64encode(b"\xed\xa0\x80").decode()}],
        "note": [{"base64": base64.b64encode(b"a\x00b").decode()}],
        "sn": [{"base64": "/w=="}],
    }
    assert old.json() == {"dn": OLD, "object_classes": ["person", "x\ufffd"], "attributes": expected}

    exported = http.get(f"/api/v1/directories/{legacy}/export")
    assert exported.status_code == 200
    records = exported.text.split("\n\n")
    # The DN with a NUL is written base64; an import would refuse it, so it is read apart.
    nul_record = f"dn:: {base64.b64encode(NUL_DN.encode()).decode()}\nobjectClass: person\ncn: nul"
    assert records[2] == nul_record and records[3] == ""
    entries = {e.dn: e for e in ldif.parse("\n\n".join(records[:2]))}
    assert entries[OLD].object_classes == ["person", "x\ufffd"]
    assert entries[OLD].attributes == {
        "cn": ["old"],
        "description": [b"\xed\xa0\x80"],
        "note": [b"a\x00b"],
        "sn": [b"\xff"],
    }

    # The entry can still be changed: its old values are binary now, not refused text.
    changed = _post(http, _entry_path(legacy, OLD), {"replace": {"cn": ["renewed"]}}, method="PATCH")
    assert changed.status_code == 200, changed.text
    assert changed.json()["attributes"] == {**expected, "cn": ["renewed"]}

    # The real `ams directory export` (it ended in "internal error" before).
    cli = run_ams("directory", "export", legacy, home=served.home)
    assert cli.returncode == 0, cli.stderr
    assert "description:: 7aCA\n" in cli.stdout and "internal error" not in cli.stderr


def test_ldif_import_with_bad_text_is_refused_and_writes_nothing(served: Served, tmp_path: Path) -> None:
    http, d = served.http, served.directory
    head = f"dn: {BASE.replace('corp', 'other')}\nobjectClass: domain\n\n".encode()
    bad = {
        "a NUL in a value": b"dn: cn=a,dc=x\nobjectClass: person\ncn: a\x00b\n",
        "a surrogate's bytes in a value": b"dn: cn=a,dc=x\nobjectClass: person\ncn: \xed\xa0\x80\n",
        "a NUL in the DN": b"dn: cn=a\x00,dc=x\nobjectClass: person\n",
        "a base64 DN with a NUL": b"dn:: " + base64.b64encode(b"cn=a\x00,dc=x") + b"\nobjectClass: person\n",
        "a base64 objectClass with a surrogate": b"dn: cn=a,dc=x\nobjectClass:: 7aCA\n",
    }
    before = http.get(f"/api/v1/directories/{d}/objects").json()
    for what, record in bad.items():
        answer = http.post(f"/api/v1/directories/{d}/import", content=head + record)
        assert answer.status_code == 422, (what, answer.text)
        assert answer.json()["error"] == "ldif_invalid" and "LDIF line " in answer.json()["message"], what
    # The real `ams directory import` reads the same way (two cases: each run starts Python).
    for what in ("a NUL in a value", "a surrogate's bytes in a value"):
        path = tmp_path / "bad.ldif"
        path.write_bytes(head + bad[what])
        cli = run_ams("directory", "import", d, str(path), home=served.home)
        assert cli.returncode == 73, (what, cli.stderr)
        assert cli.stderr.startswith("error: LDIF line 6:") and len(cli.stderr.splitlines()) == 1, cli.stderr
    # A short name or description typed on the command line that is not UTF-8 arrives as
    # lone surrogates (Python's surrogateescape): refused the same way.
    cli = run_ams("directory", "create", "cli.example.com", "--description", "caf\udce9", home=served.home)
    assert cli.returncode == 12 and "the description holds U+DCE9" in cli.stderr, cli.stderr
    assert http.get(f"/api/v1/directories/{d}/objects").json() == before
    assert len(http.get("/api/v1/directories").json()) == 2


def test_the_aws_api_refuses_bad_text_in_its_own_shape(served: Served) -> None:
    ds = boto3.client(
        "ds",
        endpoint_url=served.server.url + "/aws/ds",
        region_name="us-east-1",
        aws_access_key_id=served.key_id,
        aws_secret_access_key=served.secret,
        config=Config(retries={"max_attempts": 1}),
    )
    vpc = {"VpcId": "vpc-0123456789abcdef0", "SubnetIds": ["subnet-01234567", "subnet-89abcdef"]}
    for short in ("A\x00B", "\ud800"):
        with pytest.raises(ClientError) as refused:
            ds.create_microsoft_ad(
                Name="aws.example.com", ShortName=short, Password="Quartz-Meadow-81!", VpcSettings=vpc
            )
        error = refused.value.response["Error"]
        assert error["Code"] == "InvalidParameterException", error
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    names = [x["Name"] for x in ds.describe_directories()["DirectoryDescriptions"]]
    assert "aws.example.com" not in names


def _check_stored(
    http: httpx.Client,
    d: str,
    added: httpx.Response,
    dn: str,
    name: str,
    value: str,
    new_name: str,
    new_value: str,
) -> None:
    """What was added reads back the same by every path, and a modify is all or nothing."""
    created = added.json()
    try:
        stored_dn = created["dn"]
        assert stored_dn == dn.strip()
        if name.lower() != "objectclass":
            assert created["attributes"][name] == [value]
        path = _entry_path(d, stored_dn)
        read = http.get(path)
        assert read.status_code == 200 and read.json() == created
        assert created in http.get(f"/api/v1/directories/{d}/objects").json()
        exported = _exported(http, d)[stored_dn]
        assert exported.object_classes == created["object_classes"]
        assert exported.attributes == created["attributes"]

        changed = _post(http, path, {"replace": {new_name: [new_value]}}, method="PATCH")
        assert changed.status_code in (200, 422), changed.text
        after = http.get(path).json()
        if changed.status_code == 200:
            assert after == changed.json()
            if new_name.lower() != "objectclass":
                now = {k.lower(): v for k, v in after["attributes"].items()}
                assert now[new_name.lower()] == [new_value]
        else:
            assert after == created
    finally:
        # Whatever failed above, the next example starts from the base entry alone.
        for entry in http.get(f"/api/v1/directories/{d}/objects").json():
            if entry["dn"] != BASE:
                assert http.delete(_entry_path(d, entry["dn"])).status_code == 200, entry["dn"]


@settings(max_examples=150, deadline=None, database=None)
@given(rdn=TEXT, name=NAME, value=TEXT, object_class=TEXT, new_name=NAME, new_value=TEXT, description=TEXT)
def test_any_text_never_yields_a_5xx_nor_an_unreadable_value(
    served: Served,
    rdn: str,
    name: str,
    value: str,
    object_class: str,
    new_name: str,
    new_value: str,
    description: str,
) -> None:
    http, d = served.http, served.directory
    objects_path = f"/api/v1/directories/{d}/objects"
    dn = f"cn={rdn},{BASE}"
    body = {"dn": dn, "object_classes": ["top", object_class], "attributes": {name: [value]}}
    added = _post(http, objects_path, body)
    assert added.status_code < 500, added.text
    if added.status_code != 201:
        assert added.status_code in (409, 422) and set(added.json()) == {"error", "message"}
        assert [e["dn"] for e in http.get(objects_path).json()] == [BASE]
    else:
        _check_stored(http, d, added, dn, name, value, new_name, new_value)
    made = _post(http, "/api/v1/directories", {"dns_name": "prop.example.com", "description": description})
    assert made.status_code in (201, 422), made.text
    if made.status_code == 201:
        shown = http.get(f"/api/v1/directories/{made.json()['id']}")
        assert shown.status_code == 200 and shown.json()["description"] == description
        assert http.delete(f"/api/v1/directories/{made.json()['id']}").status_code == 200
    assert len(http.get("/api/v1/directories").json()) == 2
