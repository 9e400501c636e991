"""Directories, snapshots and restores on PostgreSQL (the streaming read and the bulk insert
take engine-specific paths)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ams.clock import ManualClock
from ams.directory import directories, objects, restore, snapfile, snapshots
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from conftest import RECOVERY_PASSWORD
from pg import PostgresServer

BASE = "dc=corp,dc=example,dc=com"


@pytest.fixture
def pg_instance(pg_server: PostgresServer, tmp_path: Path) -> Iterator[Instance]:
    url = pg_server.create_database()
    home = Home(tmp_path / "home")
    clock = ManualClock()
    create_instance(
        home, recovery_password=RECOVERY_PASSWORD, database_url_option=url, actor="test", clock=clock
    )
    instance = open_instance(home, clock)
    try:
        yield instance
    finally:
        instance.close()
        pg_server.drop_database(url)


def test_snapshot_and_restore_on_postgres(pg_instance: Instance) -> None:
    instance = pg_instance
    d = directories.create(
        instance,
        dns_name="corp.example.com",
        short_name="CORP",
        edition="Enterprise",
        additional_regions=["eu-west-1"],
        actor="t",
    ).id
    entries = [Entry(BASE, ["domain"], {"dc": ["corp"]})]
    entries += [
        Entry(f"cn=Zoë {i},{BASE}", ["person"], {"cn": [f"Zoë {i}"], "photo": [b"\xff\x00\t\n"]})
        for i in range(50)
    ]
    objects.import_entries(instance, d, entries, actor="t")
    s = snapshots.create(instance, d, actor="t")
    assert s.entries == 51 and s.checksum_ok
    _header, rows = snapfile.read_entries(instance.home.snapshots_dir / d / f"{s.id}.snap")
    assert [r[0] for r in rows][:2] == [BASE, f"cn=Zoë 0,{BASE}"]

    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    objects.delete(instance, d, f"CN=zoë 3,{BASE}", actor="t")
    snapshots.restore(instance, s.id, actor="t")
    [result] = restore.run_pending(instance)
    assert result.state == "done" and result.entries == 51
    info = directories.get(instance, d)
    assert info.stage == "Active" and info.entry_count == 51
    assert all(r.in_sync for r in info.regions)
    got = objects.get(instance, d, f"cn=zoë 3,{BASE}", region="eu-west-1")
    assert got.attributes["photo"] == [b"\xff\x00\t\n"]
    assert f"cn=later,{BASE}" not in [e.dn for e in objects.list_entries(instance, d)]
