"""Restore: round trip, a new machine, refusals, failures injected midway, a crash midway."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from ams import apikeys, audit, backup
from ams.backup import journal
from ams.backup import restore as restore_module
from ams.clock import ManualClock
from ams.db import migrate
from ams.db.engine import make_engine, sqlite_url
from ams.errors import (
    BackupUnsupported,
    DatabaseUnreadable,
    RecoveryPasswordRequired,
    RestoreFailed,
    ServiceRunning,
    WrongPassword,
)
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.lock import ServiceLock
from backup_support import (
    RECOVERY,
    Fleet,
    audit_until,
    max_audit_seq,
    table_dump,
)
from conftest import run_ams, tree_digest

# Tables a restore adds to (its own audit events and the pre-restore catalog row).
_GROWS = ("audit_events", "backups")


def _files(home: Home) -> dict[str, str]:
    return {
        name: digest
        for folder in ("config", "snapshots")
        for name, digest in tree_digest(home.root / folder).items()
    }


def test_round_trip_restores_the_backup_point_exactly(
    golden: tuple[Home, Fleet, object], populated: Instance
) -> None:
    home = populated.home
    fleet = golden[1].bind(populated)
    passwords_at_backup = fleet.read_all(populated)  # reading is audited: before the backup
    at_backup = table_dump(home.sqlite_path, skip=_GROWS)
    audit_seq = max_audit_seq(home.sqlite_path)
    audit_at_backup = audit_until(home.sqlite_path, audit_seq)
    files_at_backup = _files(home)
    result = backup.create_backup(populated, actor="test")
    assert all(p is not None for v in passwords_at_backup.values() for p in v.values())

    # Change many things: keys, devices, passwords, certificates, config files, snapshots.
    from ams.vault import certificates

    [key] = [k for k in apikeys.list_keys(populated) if k.name == "ops"]
    apikeys.revoke(populated, key.id, "test")
    apikeys.create(populated, "later", apikeys.Role.ADMIN, "test")
    device = sorted(fleet.tokens)[0]
    fleet.rotate(device)
    fleet.add("pc-late")
    [cert] = certificates.list_certificates(populated)
    certificates.lost(populated, cert.thumbprint, "test")
    (home.config_dir / "templates" / "mail.txt").write_text("changed\n")
    (home.config_dir / "scripts" / "new.sh").write_text("echo new\n")
    (home.snapshots_dir / "d-0123456789" / "s-0000000001.ldif").unlink()
    (home.config_dir / "ams.toml").write_text((home.config_dir / "ams.toml").read_text() + "\n# edited\n")
    assert table_dump(home.sqlite_path, skip=_GROWS) != at_backup
    populated.close()

    populated.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    restored = backup.restore_backup(result.path, home, actor="test", clock=populated.clock)
    assert restored.unlocked_with == "instance" and restored.new_service_key is False
    assert restored.pre_restore and Path(restored.pre_restore).is_file()

    assert table_dump(home.sqlite_path, skip=_GROWS) == at_backup
    assert audit_until(home.sqlite_path, audit_seq) == audit_at_backup
    # No mode comes from the archive: the executable script is back, owner-only and 0600.
    assert files_at_backup["scripts/hook.sh"].startswith("0o100700:")
    files_at_backup["scripts/hook.sh"] = files_at_backup["scripts/hook.sh"].replace("0o100700", "0o100600")
    assert _files(home) == files_at_backup
    again = open_instance(home, populated.clock)
    try:
        assert again.keyring.state == "unlocked"
        assert golden[1].read_all(again) == passwords_at_backup
        # The pre-restore backup, and the restored backup itself: the catalog is reconciled
        # with what the folder holds (the backup's own row was written after its image).
        assert [e.kind for e in backup.list_backups(again)] == ["pre-restore", "manual"]
        # The pre-restore backup holds the state just before: restoring it undoes the restore.
        names = {k.name for k in apikeys.list_keys(again)}
        assert names == {"ops", "reader"}
    finally:
        again.close()
    assert not journal.work_dir(home).exists()
    assert oct(home.sqlite_path.stat().st_mode & 0o777) == "0o600"


def test_new_machine_restore_with_the_recovery_password(
    golden: tuple[Home, Fleet, object], populated: Instance, tmp_path: Path
) -> None:
    fleet = golden[1].bind(populated)
    result = backup.create_backup(populated, actor="test")
    expected = fleet.read_all(populated)
    target = Home(tmp_path / "new-machine" / "ams")
    asked: list[str] = []

    def password(hint: str) -> str:
        asked.append(hint)
        return RECOVERY

    restored = backup.restore_backup(result.path, target, actor="test", password=password)
    assert asked and "set at 2026-01-01T00:00:00" in asked[0]
    assert restored.unlocked_with == "recovery password" and restored.new_service_key
    assert restored.pre_restore is None
    assert oct(target.service_key_file.stat().st_mode & 0o777) == "0o600"
    assert target.service_key_file.read_bytes() != populated.home.service_key_file.read_bytes()
    for folder in target.layout():
        assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
    new = open_instance(target, ManualClock(populated.clock.now()))
    try:
        assert new.keyring.state == "unlocked" and new.id == populated.id
        assert fleet.read_all(new) == expected  # every password reads back
        assert all(p is not None for v in expected.values() for p in v.values())
        # The restore's own events, written into the staged copy with sqlite3, read back.
        with new.session() as session:
            [done] = audit.list_events(session, event_id=int(audit.Event.BACKUP_RESTORED))
        assert done.target == result.backup_id and done.details["new_service_key"] is True
        assert done.details["restore_id"].startswith("rs_") and done.at > populated.clock.now()
    finally:
        new.close()


def test_wrong_recovery_password_is_refused_and_nothing_is_written(
    populated: Instance, tmp_path: Path
) -> None:
    result = backup.create_backup(populated, actor="test")
    target = tmp_path / "new-machine"
    with pytest.raises(WrongPassword, match="set at 2026-01-01T00:00:00"):
        backup.restore_backup(
            result.path, Home(target), actor="test", password=lambda hint: "Wrong-Password-9911-x"
        )
    assert not target.exists()
    with pytest.raises(RecoveryPasswordRequired, match="--password-stdin"):
        backup.restore_backup(result.path, Home(target), actor="test")
    assert not target.exists()


def test_another_instance_whose_service_key_does_not_open_the_backup_needs_the_password(
    populated: Instance, instance: Instance
) -> None:
    """Restoring instance A's backup over instance B: B's key cannot open A's master key."""
    result = backup.create_backup(populated, actor="test")
    instance.close()
    before = tree_digest(instance.home.root)
    with pytest.raises(RecoveryPasswordRequired):
        backup.restore_backup(result.path, instance.home, actor="test")
    assert tree_digest(instance.home.root) == before
    done = backup.restore_backup(result.path, instance.home, actor="test", password=lambda hint: RECOVERY)
    assert done.new_service_key and done.pre_restore  # B's state was saved first
    reopened = open_instance(instance.home, ManualClock(populated.clock.now()))
    try:
        assert reopened.id == populated.id and reopened.keyring.state == "unlocked"
    finally:
        reopened.close()


def test_restore_is_refused_while_the_service_runs(populated: Instance) -> None:
    result = backup.create_backup(populated, actor="test")
    populated.close()
    lock = ServiceLock(populated.home.lock_file)
    lock.acquire()
    try:
        before = tree_digest(populated.home.root)
        with pytest.raises(ServiceRunning, match=f"pid {os.getpid()}"):
            backup.restore_backup(result.path, populated.home, actor="test")
        assert tree_digest(populated.home.root) == before
    finally:
        lock.release()


def _changed(instance: Instance) -> None:
    apikeys.create(instance, "after-backup", apikeys.Role.READER, "test")
    (instance.home.config_dir / "templates" / "after.txt").write_text("after\n")
    instance.close()


def _boom_on(calls: int):  # type: ignore[no-untyped-def]
    seen = {"n": 0}
    original = journal.step

    def step(home: Home, move: str, name: str) -> None:
        seen["n"] += 1
        if seen["n"] == calls:
            raise OSError(5, "Input/output error (injected)")
        original(home, move, name)

    return step


@pytest.mark.parametrize(
    "point", ["stage", "migrate", "pre-restore", "record", "swap-1", "swap-3", "swap-4", "swap-6", "journal"]
)
def test_a_failure_injected_midway_leaves_the_instance_unchanged(
    populated: Instance, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    result = backup.create_backup(populated, actor="test")
    _changed(populated)
    home = populated.home
    before = tree_digest(home.root)

    def fail(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device (injected)")

    if point == "stage":
        monkeypatch.setattr(restore_module, "stage_archive", fail)
    elif point == "migrate":
        monkeypatch.setattr(restore_module, "_migrate_staged", fail)
    elif point == "pre-restore":
        monkeypatch.setattr(restore_module, "create_backup", fail)
    elif point == "record":
        monkeypatch.setattr(restore_module, "_record_in_staged", fail)
    elif point.startswith("swap-"):  # renames 1-3 move the live folders aside, 4-6 move in
        monkeypatch.setattr(journal, "step", _boom_on(int(point[5:])))
    elif point == "journal":
        original = journal._write

        def write(home: Home, state: str, items: list) -> None:  # type: ignore[type-arg]
            if state == "committed":
                raise OSError(28, "No space left on device (injected)")
            original(home, state, items)

        monkeypatch.setattr(journal, "_write", write)
    with pytest.raises(RestoreFailed, match="left exactly as it was"):
        backup.restore_backup(result.path, home, actor="test", clock=populated.clock)
    assert tree_digest(home.root) == before


class Crash(BaseException):
    """The power goes: raised from inside the restore, nothing cleaned up after it."""


def _crash_restore(
    populated: Instance,
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    after_step: int | None = None,
    at_state: str | None = None,
    at_finish: bool = False,
) -> Home:
    """Run a restore that dies after journal rename ``after_step``, when the journal is about
    to say ``at_state``, or when it would ``finish``; return the home, as the crash left it."""
    home = populated.home
    with monkeypatch.context() as patch:
        patch.setattr(restore_module, "_undo", lambda *a, **k: None)  # a crash cleans nothing up
        if after_step is not None:
            original_step, calls = journal.step, {"n": 0}

            def step(home: Home, move: str, name: str) -> None:
                calls["n"] += 1
                original_step(home, move, name)
                if calls["n"] == after_step:
                    raise Crash()

            patch.setattr(journal, "step", step)
        if at_state is not None:
            original_write = journal._write

            def write(home: Home, state: str, items: list, marker: str | None = None) -> None:  # type: ignore[type-arg]
                if state == at_state:
                    raise Crash()
                original_write(home, state, items, marker)

            patch.setattr(journal, "_write", write)
        if at_finish:
            patch.setattr(journal, "finish", lambda home: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            backup.restore_backup(archive, home, actor="test", clock=populated.clock)
    return home


def _drop_pre_restore_backups(home: Home) -> None:
    """A crash leaves its pre-restore backup behind: harmless, and set aside here."""
    for p in home.backups_dir.iterdir():
        if "pre-restore" in p.name:
            p.unlink()


def test_a_crash_midway_is_rolled_back_at_the_next_start(
    populated: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = backup.create_backup(populated, actor="test")
    _changed(populated)
    before = tree_digest(populated.home.root)
    # All moved aside, snapshots and config moved in ... the power goes.
    home = _crash_restore(populated, result.path, monkeypatch, after_step=5)
    assert tree_digest(home.root) != before
    with pytest.raises(DatabaseUnreadable, match="ams backup restore"):
        open_instance(home, populated.clock)  # half-swapped: nothing opens it
    _drop_pre_restore_backups(home)
    assert journal.resume(home) == "rolled back"
    assert tree_digest(home.root) == before
    again = open_instance(home, populated.clock)
    again.close()


def test_the_next_command_resolves_a_crashed_restore_before_it_opens_the_instance(
    populated: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = backup.create_backup(populated, actor="test")
    _changed(populated)
    populated.close()
    before = tree_digest(populated.home.root)
    home = _crash_restore(populated, result.path, monkeypatch, after_step=4)
    _drop_pre_restore_backups(home)
    shown = run_ams("status", home=home.root)
    assert shown.returncode == 0, shown.stderr
    assert "interrupted has been rolled back" in shown.stderr

    def outside_data(digest: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in digest.items() if not k.startswith("data/")}

    # Everything as before the restore (the database gained only the audit event 1506).
    assert outside_data(tree_digest(home.root)) == outside_data(before)
    assert not journal.work_dir(home).exists()


def test_a_crash_after_the_commit_point_is_finished(
    populated: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = backup.create_backup(populated, actor="test")
    at_backup = table_dump(populated.home.sqlite_path, skip=_GROWS)
    _changed(populated)
    home = _crash_restore(populated, result.path, monkeypatch, at_finish=True)
    assert journal.resume(home) == "finished"
    assert not journal.work_dir(home).exists()
    assert table_dump(home.sqlite_path, skip=_GROWS) == at_backup


def test_an_older_schema_is_migrated_forward(populated: Instance, tmp_path: Path) -> None:
    """A backup at revision 0004 (made here by stepping the copy back) restores at head."""
    result = backup.create_backup(populated, actor="test")
    # Build an "old" archive: restore to scratch, downgrade one step, back up again from there.
    scratch = Home(tmp_path / "scratch")
    backup.restore_backup(result.path, scratch, actor="test", password=lambda hint: RECOVERY)
    engine = make_engine(sqlite_url(scratch.sqlite_path, create=False))
    migrate.downgrade(engine, "0004_directories")
    engine.dispose()
    old = open_instance(scratch, ManualClock(populated.clock.now()), check_schema=False)
    try:
        old_backup = backup.create_backup(old, actor="test", record=False, dest=tmp_path / "old")
    finally:
        old.close()
    assert old_backup.schema_revision == "0004_directories"
    populated.close()
    done = backup.restore_backup(old_backup.path, populated.home, actor="test", clock=populated.clock)
    assert done.migrated_from == "0004_directories"
    engine = make_engine(sqlite_url(populated.home.sqlite_path, create=False))
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_a_backup_from_a_newer_ams_is_refused(populated: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    result = backup.create_backup(populated, actor="test")
    populated.close()
    before = tree_digest(populated.home.root)
    monkeypatch.setattr(migrate, "is_known", lambda revision: revision == "0001_foundation")
    with pytest.raises(BackupUnsupported, match="newer AMS"):
        backup.restore_backup(result.path, populated.home, actor="test", clock=populated.clock)
    assert tree_digest(populated.home.root) == before


def test_a_crash_after_the_last_rename_is_finished_not_undone(
    populated: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every staged folder was in place (the instance already opened as restored): roll forward."""
    result = backup.create_backup(populated, actor="test")
    at_backup = table_dump(populated.home.sqlite_path, skip=_GROWS)
    _changed(populated)
    home = _crash_restore(populated, result.path, monkeypatch, at_state="committed")
    assert journal.resume(home) == "finished"
    assert table_dump(home.sqlite_path, skip=_GROWS) == at_backup
    assert not journal.work_dir(home).exists()


def test_resolving_an_interrupted_restore_is_audited_and_waits_for_the_lock(
    populated: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ams import audit
    from ams.backup.restore import resolve_interrupted

    result = backup.create_backup(populated, actor="test")
    _changed(populated)
    home = _crash_restore(populated, result.path, monkeypatch, at_finish=True)
    lock = ServiceLock(home.lock_file)
    lock.acquire()  # a restore (or the service) at work: leave its folder alone
    try:
        assert resolve_interrupted(home, populated.clock) is None
        assert journal.work_dir(home).exists()
    finally:
        lock.release()
    assert resolve_interrupted(home, populated.clock) == "finished"
    again = open_instance(home, populated.clock)
    try:
        with again.session() as session:
            [event] = audit.list_events(session, event_id=int(audit.Event.RESTORE_INTERRUPTED_RESOLVED))
        assert event.details == {"action": "finished"}
    finally:
        again.close()
