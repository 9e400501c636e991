"""Scheduled backups and retention, driven by a ManualClock: nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ams import audit, backup
from ams.backup import catalog
from ams.backup.schedule import due_at
from ams.backup.scheduler import BackupScheduler
from ams.clock import ManualClock
from ams.errors import BadInput
from ams.instance import Instance
from ams.status import instance_status
from conftest import run_ams


def _at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def test_the_default_schedule_fires_daily_at_0200(instance: Instance, clock: ManualClock) -> None:
    settings = backup.get_settings(instance)
    assert settings.at == "02:00" and settings.retain_days == 14
    assert due_at(instance) == _at(1, 2)
    clock.set(_at(1, 1, 59))
    assert backup.run_due(instance) is None
    clock.set(_at(1, 2, 0))
    first = backup.run_due(instance)
    assert first is not None and first["ok"], first
    assert first["backup"]["kind"] == "scheduled"
    assert due_at(instance) == _at(2, 2)
    clock.set(_at(1, 12))
    assert backup.run_due(instance) is None
    [entry] = backup.list_backups(instance)
    assert entry.verified_ok is True and entry.kind == "scheduled"


def test_the_schedule_fires_at_the_configured_time(instance: Instance, clock: ManualClock) -> None:
    backup.set_settings(instance, actor="test", at="23:30")
    assert due_at(instance) == _at(1, 23, 30)
    clock.set(_at(1, 23, 29))
    assert BackupScheduler(instance).tick() is None
    clock.set(_at(1, 23, 31))
    assert BackupScheduler(instance).tick()["ok"]  # type: ignore[index]
    backup.set_settings(instance, actor="test", every="6h")
    assert due_at(instance) == _at(1, 23, 31) + timedelta(hours=6)
    clock.set(_at(2, 5, 31))
    assert backup.run_due(instance)["ok"]  # type: ignore[index]
    assert len(backup.list_backups(instance)) == 2


def test_a_missed_run_happens_once_at_the_next_start(instance: Instance, clock: ManualClock) -> None:
    clock.set(_at(5, 9))  # the service was down for four days
    assert backup.run_due(instance)["ok"]  # type: ignore[index]
    assert backup.run_due(instance) is None
    assert due_at(instance) == _at(6, 2)


def test_a_failed_scheduled_backup_is_audited_shown_and_counted_and_the_next_run_happens(
    instance: Instance, clock: ManualClock, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    backup.set_settings(instance, actor="test", destination=tmp_path / "dest", create=True)
    (tmp_path / "dest").rmdir()
    (tmp_path / "dest").write_text("now a file")  # the destination is not writable as a folder
    clock.set(_at(1, 2))
    failed = backup.run_due(instance)
    assert failed is not None and failed["ok"] is False and "not a folder" in failed["error"]
    with instance.session() as session:
        [event] = audit.list_events(session, event_id=int(audit.Event.BACKUP_FAILED))
    assert event.outcome == "failure" and "not a folder" in event.details["reason"]
    status = instance_status(instance)["backup"]
    assert status["last_backup"]["result"] == "failure"
    assert status["last_scheduled_run"]["result"] == "failure"
    assert status["failures_total"] == 1 and status["consecutive_failures"] == 1
    assert status["next_scheduled"] == _at(2, 2).isoformat()
    shown = run_ams("status", home=instance.home.root)
    assert shown.returncode == 0, shown.stderr
    assert "last backup:       FAILED" in shown.stdout and "not a folder" in shown.stdout
    assert (
        "last good backup:  none yet" in shown.stdout and "1 scheduled run(s) in a row failed" in shown.stdout
    )
    assert "next backup:" in shown.stdout

    from ams.api.metrics import Metrics

    metrics = Metrics(instance)
    assert metrics.registry.get_sample_value("ams_backup_failures_total") == 1.0

    (tmp_path / "dest").unlink()
    clock.set(_at(2, 2))
    assert backup.run_due(instance)["ok"]  # type: ignore[index]
    status = instance_status(instance)["backup"]
    assert status["last_backup"]["result"] == "success" and status["consecutive_failures"] == 0
    assert status["failures_total"] == 1
    assert "last backup:       ok" in run_ams("status", home=instance.home.root).stdout
    assert (
        metrics.registry.get_sample_value("ams_backup_last_success_timestamp_seconds")
        == _at(2, 2).timestamp()
    )
    assert metrics.registry.get_sample_value("ams_backup_last_size_bytes") > 0  # type: ignore[operator]


def test_schedule_settings_are_validated(instance: Instance) -> None:
    for kwargs, message in (
        ({"at": "25:00"}, "HH:MM"),
        ({"every": "0h"}, "not a duration"),
        ({"every": "1m"}, "at least 5m"),
        ({"at": "01:00", "every": "1h"}, "one of --at and --every"),
        ({"retain_days": 366}, "between 0 and 365"),
        ({"keep_last": -1}, "between 0 and 10000"),
        ({"create": True}, "--create goes with --dest"),
    ):
        with pytest.raises(BadInput, match=message):
            backup.set_settings(instance, actor="test", **kwargs)  # type: ignore[arg-type]
    assert backup.get_settings(instance) == backup.ScheduleSettings()


def _backups_every_day(
    instance: Instance, clock: ManualClock, days: int, *, verified: bool = True
) -> list[str]:
    ids = []
    for day in range(days):
        clock.set(_at(1, 3) + timedelta(days=day))
        result = backup.create_backup(instance, actor="test", kind="scheduled")
        with instance.transaction() as session:
            catalog.mark_verified(session, result.backup_id, clock.now(), verified)
        ids.append(result.backup_id)
    return ids


def test_retention_by_days(instance: Instance, clock: ManualClock) -> None:
    ids = _backups_every_day(instance, clock, 10)
    backup.set_settings(instance, actor="test", retain_days=3)
    clock.set(_at(10, 4))
    removed = backup.prune(instance, actor="test")
    # Cut-off Jan 7 04:00: the backups of Jan 8, 9 and 10 (03:00) stay.
    assert removed == list(reversed(ids[:7]))
    assert [e.backup_id for e in backup.list_backups(instance)] == list(reversed(ids[7:]))
    assert len(list(instance.home.backups_dir.glob("*.amsbak"))) == 3
    with instance.session() as session:
        assert len(audit.list_events(session, event_id=int(audit.Event.BACKUP_PRUNED))) == 7
    backup.set_settings(instance, actor="test", retain_days=0)
    clock.advance(timedelta(days=400))
    assert backup.prune(instance, actor="test") == []  # 0 keeps everything


def test_retention_by_keep_rules(instance: Instance, clock: ManualClock) -> None:
    ids = _backups_every_day(instance, clock, 40)  # 2026-01-01 .. 2026-02-09, one a day
    backup.set_settings(
        instance, actor="test", retain_days=0, keep_last=2, keep_daily=5, keep_weekly=3, keep_monthly=2
    )
    backup.prune(instance, actor="test")
    kept = {e.backup_id for e in backup.list_backups(instance)}
    by_day = {i + 1: ids[i] for i in range(40)}  # day of the run (1 = Jan 1)
    # Feb 9 2026 is a Monday. daily: the 5 newest days (Feb 5..9); weekly: newest of ISO weeks
    # 7, 6, 5 (Feb 9, Feb 8, Feb 1); monthly: newest of Feb and Jan (Feb 9, Jan 31); last 2: Feb 9, 8.
    expected = {by_day[d] for d in (40, 39, 38, 37, 36, 32, 31)}
    assert kept == expected


@pytest.mark.parametrize(
    "policy",
    [{"retain_days": 1}, {"keep_last": 1}, {"keep_monthly": 1}],
)
def test_the_newest_good_backup_survives_any_policy(
    instance: Instance, clock: ManualClock, policy: dict
) -> None:  # type: ignore[type-arg]
    good = _backups_every_day(instance, clock, 3, verified=True)
    clock.set(_at(20))
    bad = backup.create_backup(instance, actor="test", kind="scheduled")
    with instance.transaction() as session:
        catalog.mark_verified(session, bad.backup_id, clock.now(), False, "injected")
    backup.set_settings(instance, actor="test", **policy)
    clock.set(_at(28))
    backup.prune(instance, actor="test")
    kept = {e.backup_id for e in backup.list_backups(instance)}
    assert good[-1] in kept  # the newest that verified
    assert bad.backup_id in kept  # and the newest at all
    assert (
        Path(instance.home.backups_dir)
        / Path(next(e.path for e in backup.list_backups(instance) if e.backup_id == good[-1]) or "").name
    ).is_file()


def test_pre_restore_backups_are_not_pruned(instance: Instance, clock: ManualClock) -> None:
    result = backup.create_backup(instance, actor="test", kind="pre-restore")
    _backups_every_day(instance, clock, 2)
    backup.set_settings(instance, actor="test", keep_last=1)
    clock.set(_at(30))
    backup.prune(instance, actor="test")
    assert result.path.is_file()
