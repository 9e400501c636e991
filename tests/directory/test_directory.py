"""Directories and their entries, in-process, through the services and the REST API."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ams import apikeys, audit
from ams.api import create_app
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.directory import directories, objects
from ams.directory.entry import Entry
from ams.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    DirectoryEntryNotFound,
    DirectoryNotFound,
)
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from conftest import RECOVERY_PASSWORD

BASE = "dc=corp,dc=example,dc=com"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """One instance for tests that change nothing (creating an instance costs about 1 s)."""
    home = Home(tmp_path_factory.mktemp("shared") / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=ManualClock())
    inst = open_instance(home, ManualClock())
    try:
        yield inst
    finally:
        inst.close()


def make(instance: Instance, **kwargs: object) -> directories.DirectoryInfo:
    args: dict[str, object] = {"dns_name": "corp.example.com", "short_name": "CORP", "actor": "test"}
    args.update(kwargs)
    return directories.create(instance, **args)  # type: ignore[arg-type]


def test_create_list_show_delete(instance: Instance) -> None:
    info = make(instance, edition="Enterprise", additional_regions=["eu-west-1", "ap-south-1"])
    assert re.fullmatch(r"d-[0-9a-f]{10}", info.id)
    assert info.stage == "Active"
    assert [(r.region, r.type) for r in info.regions] == [
        ("us-east-1", "Primary"),
        ("ap-south-1", "Additional"),
        ("eu-west-1", "Additional"),
    ]
    assert [d.id for d in directories.list_directories(instance)] == [info.id]
    assert directories.get(instance, info.id).dns_name == "corp.example.com"
    gone = directories.delete(instance, info.id, actor="test")
    assert gone.stage == "Deleted"
    with pytest.raises(DirectoryNotFound):
        directories.get(instance, info.id)
    with instance.session() as session:
        names = [e.name for e in audit.list_events(session)]
    assert "directory_created" in names and "directory_deleted" in names


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"dns_name": "not a name"}, "not a DNS name"),
        ({"short_name": ".AB"}, "short name"),
        ({"type": "SimpleAD"}, "directory type"),
        ({"edition": "Gold"}, "edition"),
        ({"region": "mars"}, "region"),
        ({"additional_regions": ["eu-west-1"]}, "Enterprise"),
        ({"edition": "Enterprise", "additional_regions": ["us-east-1"]}, "differ"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_made(shared: Instance, kwargs: dict, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        make(shared, **kwargs)
    assert directories.list_directories(shared) == []


def test_dns_name_is_unique_without_case(instance: Instance) -> None:
    make(instance)
    with pytest.raises(AlreadyExists):
        make(instance, dns_name="CORP.example.com")


def test_unknown_or_malformed_ids(shared: Instance) -> None:
    with pytest.raises(DirectoryNotFound, match="no directory d-0000000000"):
        directories.get(shared, "d-0000000000")
    with pytest.raises(DirectoryNotFound, match="not a directory id"):
        directories.get(shared, "../etc")


def test_entries_by_dn_case_insensitive(instance: Instance) -> None:
    d = make(instance)
    objects.add(instance, d.id, Entry(BASE, ["top", "domain"], {"dc": ["corp"]}), actor="t")
    alice = Entry(f"CN=Alice , OU=People,{BASE}", ["person"], {"cn": ["Alice"], "sn": ["Smith"]})
    objects.add(instance, d.id, alice, actor="t")
    with pytest.raises(AlreadyExists):
        objects.add(instance, d.id, Entry(f"cn=alice,ou=people,{BASE}", ["person"], {"cn": ["x"]}), actor="t")
    got = objects.get(instance, d.id, f"cn=ALICE,ou=people,{BASE}")
    assert got.dn == alice.dn  # the spelling given is kept
    assert got.attributes == {"cn": ["Alice"], "sn": ["Smith"]}

    changed = objects.modify(
        instance,
        d.id,
        f"cn=alice,ou=people,{BASE}",
        replace={"SN": ["Jones"]},
        add={"mail": ["a@example.com"], "objectClass": ["inetOrgPerson"]},
        actor="t",
    )
    assert changed.get("sn") == ["Jones"]
    assert changed.object_classes == ["person", "inetOrgPerson"]
    changed = objects.modify(instance, d.id, alice.dn, delete={"mail": []}, actor="t")
    assert changed.get("mail") == []
    with pytest.raises(BadInput, match="no attribute"):
        objects.modify(instance, d.id, alice.dn, delete={"telephoneNumber": []}, actor="t")

    assert [e.dn for e in objects.list_entries(instance, d.id, base=BASE)] == [BASE, alice.dn]
    assert [e.dn for e in objects.list_entries(instance, d.id, contains="ALICE")] == [alice.dn]
    assert objects.list_entries(instance, d.id, contains="100%_") == []  # LIKE's wildcards are text
    with pytest.raises(Conflict, match="entries under it"):
        objects.delete(instance, d.id, BASE, actor="t")
    objects.delete(instance, d.id, alice.dn, actor="t")
    with pytest.raises(DirectoryEntryNotFound):
        objects.get(instance, d.id, alice.dn)


def test_entry_needs_an_object_class(instance: Instance) -> None:
    d = make(instance)
    with pytest.raises(BadInput, match="objectClass"):
        objects.add(instance, d.id, Entry(BASE, [], {"dc": ["corp"]}), actor="t")


def test_import_is_all_or_nothing(instance: Instance) -> None:
    d = make(instance)
    good = [Entry(f"cn=u{i},{BASE}", ["person"], {"cn": [f"u{i}"], "sn": ["s"]}) for i in range(10)]
    with pytest.raises(AlreadyExists):
        objects.import_entries(instance, d.id, [*good, good[3]], actor="t")
    assert objects.list_entries(instance, d.id) == []
    assert objects.import_entries(instance, d.id, good, actor="t") == 10


def test_export_order_is_parents_first(instance: Instance) -> None:
    d = make(instance)
    objects.add(instance, d.id, Entry(f"cn=deep,ou=x,{BASE}", ["person"], {"cn": ["deep"]}), actor="t")
    objects.add(instance, d.id, Entry(f"ou=x,{BASE}", ["organizationalUnit"], {"ou": ["x"]}), actor="t")
    objects.add(instance, d.id, Entry(BASE, ["domain"], {"dc": ["corp"]}), actor="t")
    assert [e.dn for e in objects.iter_entries(instance, d.id)] == [
        BASE,
        f"ou=x,{BASE}",
        f"cn=deep,ou=x,{BASE}",
    ]


# The REST API.


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan's background jobs stay off, so the test
    # decides when a restore runs.
    yield TestClient(create_app(instance))


@pytest.fixture
def admin(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'admin', Role.ADMIN, 'test').token}"}


@pytest.fixture
def reader(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'reader', Role.READER, 'test').token}"}


def test_rest_directories_and_objects(client: TestClient, admin: dict, reader: dict) -> None:
    assert client.get("/api/v1/directories").status_code == 401
    body = {"dns_name": "corp.example.com", "short_name": "CORP"}
    assert client.post("/api/v1/directories", json=body, headers=reader).status_code == 403
    created = client.post("/api/v1/directories", json=body, headers=admin)
    assert created.status_code == 201, created.text
    did = created.json()["id"]
    assert [d["id"] for d in client.get("/api/v1/directories", headers=reader).json()] == [did]
    bad = client.post("/api/v1/directories", json={"dns_name": "x y"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["error"] == "bad_input"

    url = f"/api/v1/directories/{did}/objects"
    entry = {
        "dn": BASE,
        "object_classes": ["domain"],
        "attributes": {"dc": "corp", "photo": [{"base64": "/wA="}]},
    }
    assert client.post(url, json=entry, headers=admin).status_code == 201
    assert client.post(url, json=entry, headers=admin).status_code == 409
    read = client.get(f"{url}/DC=Corp,dc=example,dc=com", headers=reader)
    assert read.status_code == 200
    assert read.json()["attributes"] == {"dc": ["corp"], "photo": [{"base64": "/wA="}]}
    patched = client.patch(f"{url}/{BASE}", json={"replace": {"description": ["HQ"]}}, headers=admin)
    assert patched.json()["attributes"]["description"] == ["HQ"]
    assert len(client.get(url, headers=reader).json()) == 1
    assert client.get(f"{url}/cn=nobody,{BASE}", headers=reader).status_code == 404
    exported = client.get(f"/api/v1/directories/{did}/export", headers=reader).text
    assert "description: HQ" in exported
    assert client.delete(f"{url}/{BASE}", headers=admin).status_code == 200
    imported = client.post(
        f"/api/v1/directories/{did}/import",
        content=exported.encode(),
        headers={**admin, "content-type": "text/plain"},
    )
    assert imported.json() == {"directory_id": did, "imported": 1}
    bad_ldif = client.post(
        f"/api/v1/directories/{did}/import", content=b"dn: x\nchangetype: add\n", headers=admin
    )
    assert bad_ldif.status_code == 422 and "line 2" in bad_ldif.json()["message"]
    assert client.delete(f"/api/v1/directories/{did}", headers=admin).json()["stage"] == "Deleted"
    assert client.get(f"/api/v1/directories/{did}", headers=reader).status_code == 404
