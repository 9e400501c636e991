"""``ams backup create`` on the embedded database: plain sqlite3, the same archive and rows.

The command takes :class:`ams.backup.embedded.EmbeddedSource` when the home is as
``open_instance`` would take it, unlocked; anything else goes through the opened instance,
which names what is wrong. Both paths must write the same catalog row and audit event.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ams import audit, backup
from ams.backup.create import create_backup_at, write_backup
from ams.backup.embedded import EmbeddedSource
from ams.clock import ManualClock
from ams.db.revision import HEAD_REVISION
from ams.errors import MasterKeyLocked, SchemaMismatch
from ams.home import Home
from ams.instance import Instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest


def _rows(db: Path, backup_id: str) -> tuple[dict[str, object], dict[str, object]]:
    """The raw stored catalog row and audit event of one backup, as SQLite holds them."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        row = dict(conn.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone())
        event = dict(
            conn.execute(
                "SELECT event_id, at, actor, outcome, target, details FROM audit_events WHERE target = ?",
                (backup_id,),
            ).fetchone()
        )
    finally:
        conn.close()
    return row, event


def test_the_embedded_path_writes_what_the_orm_path_writes(instance: Instance, clock: ManualClock) -> None:
    home = instance.home
    by_orm = backup.create_backup(instance, actor="cli:test")
    instance.close()
    clock.advance(timedelta(minutes=5))
    source = EmbeddedSource.open(home, clock)
    assert source is not None
    check = open_instance(home, clock)
    assert source.master_key() == check.keyring.master_key()
    check.close()
    with source:
        by_sqlite = write_backup(source, actor="cli:test")

    orm_row, orm_event = _rows(home.sqlite_path, by_orm.backup_id)
    raw_row, raw_event = _rows(home.sqlite_path, by_sqlite.backup_id)
    # Same columns, same types and formats, differing only where the backups differ.
    assert orm_row.keys() == raw_row.keys()
    for name in orm_row:
        assert type(orm_row[name]) is type(raw_row[name]), name
    assert len(str(orm_row["created_at"])) == len(str(raw_row["created_at"]))
    same = ("kind", "status", "mk_fingerprint", "schema_revision", "recovery_password_set_at", "verified_ok")
    assert {k: raw_row[k] for k in same} == {k: orm_row[k] for k in same}
    assert raw_row["path"] == str(by_sqlite.path) and raw_row["size_bytes"] == by_sqlite.size_bytes
    assert raw_event["at"] > orm_event["at"] and len(raw_event["at"]) == len(orm_event["at"])
    assert {k: raw_event[k] for k in ("event_id", "actor", "outcome")} == {
        k: orm_event[k] for k in ("event_id", "actor", "outcome")
    }
    assert json.loads(raw_event["details"]).keys() == json.loads(orm_event["details"]).keys()

    # Read back through the ORM: the catalog lists both, the audit trail has both events.
    reopened = open_instance(home, clock)
    try:
        listed = {e.backup_id: e for e in backup.list_backups(reopened)}
        assert listed[by_sqlite.backup_id].created_at == by_sqlite.created_at
        assert (
            listed[by_sqlite.backup_id].recovery_password_set_at
            == listed[by_orm.backup_id].recovery_password_set_at
        )
        assert listed[by_sqlite.backup_id].size_bytes == by_sqlite.size_bytes
        with reopened.session() as session:
            created = audit.list_events(session, event_id=int(audit.Event.BACKUP_CREATED))
        assert [e.target for e in created] == [by_orm.backup_id, by_sqlite.backup_id]
        assert created[1].at == clock.now()
        report = backup.verify_backup(by_sqlite.path, instance=reopened)
        assert report["backup_id"] == by_sqlite.backup_id
    finally:
        reopened.close()


def _run_and_list_modules(args: list[str], stdin: str = "") -> tuple[str, list[str]]:
    """Run ``ams ARGS`` in a fresh interpreter: (its stdout, the heavy modules it loaded)."""
    probe = (
        "import json, sys\nfrom ams.cli.main import run\n"
        f"status = run({args!r})\n"
        "print(json.dumps({'status': status, 'modules': sorted(sys.modules)}), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], input=stdin, capture_output=True, text=True, timeout=120
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["status"] == 0, proc.stderr
    heavy = [
        m for m in report["modules"] if m.split(".")[0] in ("sqlalchemy", "alembic") or m == "ams.instance"
    ]
    return proc.stdout, heavy


def test_create_and_a_restore_into_a_new_home_load_no_database_layer(
    instance: Instance, tmp_path: Path
) -> None:
    home = instance.home
    instance.close()
    out, heavy = _run_and_list_modules(["backup", "create", "--json", "--home", str(home.root)])
    assert heavy == []
    made = Path(json.loads(out)["path"])
    assert made.is_file()
    target = tmp_path / "new-machine"
    out, heavy = _run_and_list_modules(
        ["backup", "restore", str(made), "--password-stdin", "--json", "--home", str(target)],
        RECOVERY_PASSWORD + "\n",
    )
    assert heavy == []
    assert json.loads(out)["unlocked_with"] == "recovery password"
    reopened = open_instance(Home(target))
    try:
        assert reopened.keyring.state == "unlocked"
        with reopened.session() as session:
            [restored] = audit.list_events(session, event_id=int(audit.Event.BACKUP_RESTORED))
        assert restored.target == json.loads(out)["backup_id"]
    finally:
        reopened.close()


def _source(home: Home) -> EmbeddedSource | None:
    source = EmbeddedSource.open(home)
    if source is not None:
        source.close()
    return source


def test_anything_out_of_the_ordinary_goes_through_the_instance(
    instance: Instance, clock: ManualClock
) -> None:
    home = instance.home
    instance.close()
    assert _source(home) is not None
    config = home.config_file.read_text()

    # A PostgreSQL URL in the file or the environment: not the embedded database.
    home.config_file.write_text(config.replace('url = ""', 'url = "postgresql://ams@127.0.0.1:1/none"'))
    assert _source(home) is None
    home.config_file.write_text(config)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AMS_DATABASE__URL", "postgresql://ams@127.0.0.1:1/none")
        assert _source(home) is None
    assert _source(home) is not None

    # Another schema revision: the instance refuses it, so the command does as before.
    conn = sqlite3.connect(home.sqlite_path)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '0004_directories'")
    conn.close()
    assert _source(home) is None
    with pytest.raises(SchemaMismatch, match="older schema revision"):
        create_backup_at(home, actor="test")
    conn = sqlite3.connect(home.sqlite_path)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (HEAD_REVISION,))
    conn.close()

    # No service key, or another one: locked, refused by the instance with its reason.
    key = home.service_key_file.read_bytes()
    home.service_key_file.unlink()
    assert _source(home) is None
    before = tree_digest(home.root)
    with pytest.raises(MasterKeyLocked, match="security unlock"):
        create_backup_at(home, actor="test")
    assert tree_digest(home.root) == before
    home.service_key_file.write_bytes(b"A" * 43 + b"=\n")
    assert _source(home) is None
    home.service_key_file.write_bytes(key)
    assert _source(home) is not None


def test_a_locked_or_broken_home_fails_the_command_as_before(instance: Instance) -> None:
    home = instance.home
    instance.close()
    home.service_key_file.unlink()
    before = tree_digest(home.root)
    locked = run_ams("backup", "create", home=home.root)
    assert locked.returncode != 0 and "master key locked" in locked.stderr
    assert "Traceback" not in locked.stderr
    assert tree_digest(home.root) == before
    home.config_file.write_text("[server]\nport = 'eighty'\n")
    bad = run_ams("backup", "create", home=home.root)
    assert bad.returncode != 0 and "server.port" in bad.stderr
    assert tree_digest(home.root) != before  # only the config file we broke
    missing = run_ams("backup", "create", home=home.root.parent / "nothing-here")
    assert missing.returncode != 0 and "ams init" in missing.stderr


def test_the_schedule_destination_is_the_default_on_both_paths(
    instance: Instance, tmp_path: Path, clock: ManualClock
) -> None:
    dest = tmp_path / "elsewhere"
    backup.set_settings(instance, actor="test", destination=dest, create=True)
    home = instance.home
    instance.close()
    made = create_backup_at(home, actor="cli:test")
    assert made.path.parent == dest and made.path.is_file()
    done = run_ams("backup", "create", "--json", home=home.root)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["path"]).parent == dest
    # The restore of that archive reads back with the recovery password on a new machine.
    restored = run_ams(
        "backup",
        "restore",
        str(made.path),
        "--password-stdin",
        home=tmp_path / "new-machine",
        input=RECOVERY_PASSWORD + "\n",
    )
    assert restored.returncode == 0, restored.stderr
