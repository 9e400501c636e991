"""Migration 0009_ldap: the equality index is built for entries stored before it, and its
downgrade keeps every entry (a SQLite batch copy of `directories` would cascade to them)."""

from __future__ import annotations

from sqlalchemy import text

from ams.db import migrate
from ams.directory import directories, objects
from ams.directory.entry import Entry
from ams.instance import Instance

BASE = "DC=corp,DC=example,DC=com"


def test_upgrade_indexes_existing_entries_and_downgrade_keeps_them(instance: Instance) -> None:
    d = directories.create(instance, dns_name="corp.example.com", short_name="CORP", actor="t").id
    entries = [Entry(BASE, ["domain"], {"dc": ["corp"]})]
    entries += [Entry(f"CN=U{i},{BASE}", ["person"], {"cn": [f"U{i}"], "uid": [f"u{i}"]}) for i in range(3)]
    objects.import_entries(instance, d, entries, actor="t")
    migrate.downgrade(instance.engine, "0008_console")
    with instance.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM directory_objects")).scalar() == 4
    migrate.upgrade(instance.engine)
    with instance.engine.connect() as conn:
        indexed = set(conn.execute(text("SELECT attribute, value FROM directory_values")).all())
    assert indexed == {(a, f"{p}{i}") for i in range(3) for a, p in (("cn", "u"), ("uid", "u"))}
