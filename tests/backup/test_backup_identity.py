"""Issue 17 in-process: a paused schedule, retention limited to this home's archives, and
leftovers of a backup still at work left alone (the e2e tests run the whole story)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from ams import backup
from ams.backup import catalog, leftovers
from ams.backup.scheduler import BackupScheduler
from ams.clock import ManualClock
from ams.db.models.backups import BackupRecord, BackupSchedule
from ams.instance import Instance
from conftest import run_ams


def test_a_paused_schedule_waits_and_retention_deletes_only_this_homes_archives(
    instance: Instance, clock: ManualClock, tmp_path: Path
) -> None:
    dest = tmp_path / "shared"
    backup.set_settings(instance, actor="test", destination=dest, create=True, retain_days=0, keep_last=1)
    theirs = backup.create_backup(instance, actor="test")
    ours = backup.create_backup(instance, actor="test")
    with instance.transaction() as session:
        session.get(BackupRecord, theirs.backup_id).home_id = "hm_0000000000000000"  # type: ignore[union-attr]
        session.get(BackupSchedule, 1).paused_reason = "restored from another home"  # type: ignore[union-attr]
    assert ours.home_id == instance.home_id and ours.home_id

    clock.set(datetime(2026, 1, 3, tzinfo=UTC))  # long past due
    assert backup.run_due(instance) is None and BackupScheduler(instance).tick() is None
    assert backup.schedule_status(instance)["paused"] == "restored from another home"
    assert catalog.default_destination(instance) == instance.home.backups_dir  # not the inherited one

    backup.set_settings(instance, actor="test", destination=dest)  # the administrator confirms it
    assert backup.schedule_status(instance)["paused"] is None
    clock.set(datetime(2026, 1, 3, 2, tzinfo=UTC))  # the next 02:00
    run = backup.run_due(instance)
    assert run is not None and run["ok"], run
    assert run["pruned"] == [ours.backup_id] and not ours.path.exists()
    assert theirs.path.is_file()
    listed = {e.backup_id: e for e in backup.list_backups(instance)}
    assert listed[theirs.backup_id].written_here is False


def test_only_what_nobody_holds_is_a_leftover(tmp_path: Path) -> None:
    work = tmp_path / ".bk_0123456789abcdef.x1y2.work"
    work.mkdir()
    (work / "ams.db").write_bytes(b"image")
    tmp = tmp_path / ".ams-20260101T000000Z-manual-0123456789abcdef.amsbak.q8.tmp"
    tmp.write_bytes(b"partial")
    kept = tmp_path / "ams-20260101T000000Z-manual-0123456789abcdef.amsbak"
    kept.write_bytes(b"a backup")
    held = leftovers.hold(work)
    handle = open(tmp, "rb")  # noqa: SIM115 - closed below
    leftovers.hold(tmp, handle.fileno())
    try:
        assert leftovers.clean(tmp_path) == []  # a backup at work: left alone
        assert work.is_dir() and tmp.is_file()
    finally:
        os.close(held)
        handle.close()
    assert leftovers.clean(tmp_path) == sorted([work.name, tmp.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


def test_a_killed_backup_is_cleaned_by_the_next_command(instance: Instance) -> None:
    home = instance.home
    instance.close()
    (home.backups_dir / ".bk_0123456789abcdef.k1.work").mkdir(mode=0o700)
    (home.backups_dir / ".ams-20260101T000000Z-manual-0123456789abcdef.amsbak.k2.tmp").write_bytes(b"part")
    shown = run_ams("status", home=home.root)
    assert shown.returncode == 0, shown.stderr
    assert "removed what a crashed backup left" in shown.stderr
    assert list(home.backups_dir.iterdir()) == []
