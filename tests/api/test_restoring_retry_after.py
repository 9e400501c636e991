"""A directory being restored is offline: the REST answers that touch its entries are 503
``directory_unavailable`` with ``Retry-After`` (what an agent registering into it waits),
and the registration sent again once the restore ended succeeds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ams.api import create_app
from ams.directory import directories, objects, restore, snapshots
from ams.directory.entry import Entry
from ams.errors import DirectoryUnavailable
from ams.instance import Instance
from ams.vault import regkeys
from vault_support import _small_keys  # noqa: F401 - a fixture

BASE = "dc=corp,dc=example,dc=com"
DN = f"cn=pc-0001,{BASE}"


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    # Not entered: the app's lifespan would start the restore worker, which ends the restore
    # before the test can ask; here the test runs the queued restore itself (as serve would).
    client = TestClient(create_app(instance))
    yield client
    client.close()


def test_registration_into_a_restoring_directory_is_503_with_retry_after(
    client: TestClient, instance: Instance
) -> None:
    corp = directories.create(instance, dns_name="corp.example.com", short_name=None, actor="test")
    objects.import_entries(
        instance, corp.id, [Entry(DN, ["top", "computer"], {"cn": ["pc-0001"]})], actor="test"
    )
    snap = snapshots.create(instance, corp.id, name="before", actor="test")
    key = regkeys.create(instance, "fleet", "test").key
    body = {"registration_key": key, "name": "pc-0001", "scope": corp.id, "dn": DN}
    snapshots.restore(instance, snap.id, actor="test")  # queued: the directory is Restoring
    assert directories.get(instance, corp.id).stage == "Restoring"

    refused = client.post("/api/v1/agent/register", json=body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "directory_unavailable"
    assert refused.headers.get("Retry-After") == str(DirectoryUnavailable.retry_after)
    assert int(refused.headers["Retry-After"]) >= 1

    list(restore.run_pending(instance))  # what `ams serve` does meanwhile
    assert directories.get(instance, corp.id).stage == "Active"
    again = client.post("/api/v1/agent/register", json=body)
    assert again.status_code == 201, again.text
