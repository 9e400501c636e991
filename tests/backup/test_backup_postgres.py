"""Backups of an instance on a real PostgreSQL server (tests/pg.py), and restores onto it.

A PostgreSQL backup holds a consistent logical copy of every AMS table in the same archive
format as the embedded database: it verifies, drills, and restores onto PostgreSQL (one
transaction) or onto the embedded database of a machine without PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ams import apikeys, audit, backup
from ams.api import create_app
from ams.backup import journal, pg
from ams.backup.restore import resolve_interrupted
from ams.clock import ManualClock
from ams.db.models import Base
from ams.errors import RestoreFailed
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.vault import passwords
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest
from pg import PostgresServer
from vault_support import Agent, _small_keys, register  # noqa: F401 - _small_keys is a fixture

pytestmark = pytest.mark.postgres

CHANGING = {"audit_events", "backups"}  # a restore adds its own events and pre-restore row


def _rows(instance: Instance) -> dict[str, list[str]]:
    """Every row of every AMS table, as text, sorted: what "the same data" means here."""
    out: dict[str, list[str]] = {}
    with instance.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(select(table)).mappings().all()
            out[table.name] = sorted(json.dumps(dict(r), default=str, sort_keys=True) for r in rows)
    return out


def _steady(rows: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in rows.items() if k not in CHANGING}


def _agents(instance: Instance, client: TestClient, count: int = 3) -> list[Agent]:
    agents = [register(client, instance, f"pg-host-{i}") for i in range(count)]
    for agent in agents:
        agent.rotate()
        agent.rotate()
    return agents


def _current_password(instance: Instance, device_id: str) -> str:
    return str(passwords.read(instance, device_id, "test")["password"])


def test_a_postgres_backup_restores_onto_postgres_and_onto_the_embedded_database(
    pg_instance: Instance, pg_server: PostgresServer, tmp_path: Path
) -> None:
    instance = pg_instance
    with TestClient(create_app(instance)) as client:
        agents = _agents(instance, client)
        apikeys.create(instance, "reader-1", "reader", "test")
        at_backup = _rows(instance)
        expected = {a.device_id: a.passwords[a.version] for a in agents}
        made = backup.create_backup(instance, actor="test")
        assert made.manifest["backend"] == "postgresql"
        assert made.manifest["counts"]["device_passwords"] == len(at_backup["device_passwords"]) >= 3
        drill = backup.verify_backup(made.path, instance=instance, deep=True)
        assert drill["ok"] and "restore drill" in drill["checks"]
        # Change things after the backup point.
        for agent in agents:
            agent.rotate()
        apikeys.create(instance, "reader-2", "reader", "test")
    assert _steady(_rows(instance)) != _steady(at_backup)

    instance.close()
    result = backup.restore_backup(made.path, instance.home, actor="test", clock=instance.clock)
    assert result.database.startswith("postgresql") and result.pre_restore
    again = open_instance(instance.home, instance.clock)
    try:
        assert again.engine_name == "postgresql"
        assert _steady(_rows(again)) == _steady(at_backup)
        for device_id, password in expected.items():
            assert _current_password(again, device_id) == password
        with again.transaction() as session:  # the id sequences go on after the restored rows
            audit.record(session, again.clock, audit.Event.SERVICE_STARTED, actor="test")
        with again.session() as session:
            [restored] = audit.list_events(session, event_id=int(audit.Event.BACKUP_RESTORED))
        assert restored.details["restore_id"].startswith("rs_")
    finally:
        again.close()
    # The config still points at this PostgreSQL database.
    assert "postgresql" in (instance.home.config_file.read_text())

    # A machine without PostgreSQL: the same file onto the embedded database.
    elsewhere = Home(tmp_path / "elsewhere")
    moved = backup.restore_backup(
        made.path, elsewhere, actor="test", password=lambda hint: RECOVERY_PASSWORD, clock=instance.clock
    )
    assert moved.database == "sqlite" and elsewhere.sqlite_path.is_file()
    embedded = open_instance(elsewhere, instance.clock)
    try:
        assert embedded.engine_name == "sqlite"
        # The same rows, except the service wrapping: this machine has a new service key.
        # And a new home: its own identity, the backup's schedule paused (issue 17).
        here = _steady(_rows(embedded))
        wrappings = here.pop("master_key_wrappings")
        [row] = [json.loads(r) for r in here.pop("instance")]
        [was] = [json.loads(r) for r in at_backup["instance"]]
        assert row["home_id"] != was["home_id"] and {**row, "home_id": None} == {**was, "home_id": None}
        [schedule] = [json.loads(r) for r in here.pop("backup_schedule")]
        assert schedule["paused_reason"] and moved.schedule_paused == schedule["paused_reason"]
        changed = ("master_key_wrappings", "instance", "backup_schedule")
        assert here == {k: v for k, v in _steady(at_backup).items() if k not in changed}
        recovery = [w for w in at_backup["master_key_wrappings"] if '"kind": "recovery"' in w]
        assert recovery and recovery[0] in wrappings
        for device_id, password in expected.items():
            assert _current_password(embedded, device_id) == password
    finally:
        embedded.close()

    # And onto another, empty PostgreSQL database, named on the command line.
    fresh = pg_server.create_database()
    other = tmp_path / "other"
    done = run_ams(
        "backup",
        "restore",
        str(made.path),
        "--password-stdin",
        "--database-url",
        fresh,
        "--json",
        home=other,
        input=RECOVERY_PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["database"].startswith("postgresql")
    shown = run_ams("status", "--json", home=other)
    assert json.loads(shown.stdout)["database"]["engine"] == "postgresql"
    pg_server.drop_database(fresh)


def test_a_failure_while_copying_onto_postgres_changes_nothing(
    pg_instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = pg_instance
    with TestClient(create_app(instance)) as client:
        agents = _agents(instance, client, count=2)
        made = backup.create_backup(instance, actor="test")
        agents[0].rotate()
    before_rows = _rows(instance)
    instance.close()
    before_tree = tree_digest(instance.home.root)

    def broken(conn: Any) -> None:
        raise RuntimeError("the disk under PostgreSQL failed")

    monkeypatch.setattr(pg, "_reset_sequences", broken)
    with pytest.raises(RestoreFailed, match="left exactly as it was"):
        backup.restore_backup(made.path, instance.home, actor="test", clock=instance.clock)
    assert tree_digest(instance.home.root) == before_tree
    again = open_instance(instance.home, instance.clock)
    try:
        assert _rows(again) == before_rows
    finally:
        again.close()


def test_a_bad_database_url_is_refused_before_anything_is_written(
    tmp_path: Path, pg_instance: Instance
) -> None:
    made = backup.create_backup(pg_instance, actor="test")
    empty = tmp_path / "empty"
    bad = run_ams(
        "backup",
        "restore",
        str(made.path),
        "--password-stdin",
        "--database-url",
        "mysql://x/y",
        home=empty,
        input=RECOVERY_PASSWORD + "\n",
    )
    assert bad.returncode != 0 and "postgresql://" in bad.stderr and "Traceback" not in bad.stderr
    assert not empty.exists()
    busy = run_ams(
        "backup", "restore", str(made.path), "--yes", "--database-url", "sqlite", home=pg_instance.home.root
    )
    assert busy.returncode != 0 and "empty home" in busy.stderr


@pytest.mark.parametrize("committed", [True, False])
def test_a_crash_between_the_folders_and_the_database_commit_is_resolved(
    pg_instance: Instance, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """State ``db-pending``: the marker row in PostgreSQL says whether the commit happened."""
    instance = pg_instance
    made = backup.create_backup(instance, actor="test")
    apikeys.create(instance, "after-the-backup", "reader", "test")
    before = _rows(instance)
    instance.close()

    class Crash(BaseException):
        pass

    real_commit = pg.PostgresRestore.commit

    def crashing_commit(self: pg.PostgresRestore) -> None:
        if committed:
            real_commit(self)
        else:
            self.rollback()  # the power went before COMMIT reached the server
        raise Crash()

    monkeypatch.setattr(pg.PostgresRestore, "commit", crashing_commit)
    monkeypatch.setattr("ams.backup.restore._undo", lambda *a, **k: None)
    monkeypatch.setattr(journal, "finish", lambda home: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        backup.restore_backup(made.path, instance.home, actor="test", clock=instance.clock)
    monkeypatch.undo()
    state = json.loads(journal.journal_path(instance.home).read_text())["state"]
    assert state == "db-pending"
    assert resolve_interrupted(instance.home, instance.clock) == ("finished" if committed else "rolled back")
    again = open_instance(instance.home, instance.clock)
    try:
        rows = _rows(again)
        if committed:
            assert not any("after-the-backup" in r for r in rows["api_keys"])
        else:
            assert _steady(rows) == _steady(before)
    finally:
        again.close()


def test_only_the_node_holding_the_advisory_lock_runs_the_scheduled_backup(
    pg_instance: Instance, clock: ManualClock, tmp_path: Path
) -> None:
    import psycopg

    from ams.backup.scheduler import ADVISORY_LOCK, BackupScheduler

    backup.set_settings(pg_instance, actor="test", destination=tmp_path / "shared", create=True)
    clock.advance(timedelta(days=2))  # the daily run is due
    url = pg_instance.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as other_node:
        other_node.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))  # another node is at it
        assert BackupScheduler(pg_instance).tick() is None
        assert backup.list_backups(pg_instance) == []
        other_node.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK,))
    ran = BackupScheduler(pg_instance).tick()
    assert ran is not None and ran["ok"], ran
    assert [e.kind for e in backup.list_backups(pg_instance)] == ["scheduled"]
    assert BackupScheduler(pg_instance).tick() is None  # done for today, whichever node asks
