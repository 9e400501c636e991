"""The backup schedule and retention, and one scheduled run.

Times are UTC. ``at HH:MM`` runs once a day at that time; ``every DURATION`` runs that long
after the previous run. A run that was missed (the service was stopped) happens once at the
next start, not once per missed slot. Each run writes a backup, verifies it, and prunes.

Retention rules combine (as borg's ``--keep-within`` and ``--keep-daily`` do): ``retain_days``
N keeps every backup younger than N days (0: no age rule), keep-last/daily/weekly/monthly
keep counts, and a backup is kept when any rule keeps it; with no rule at all every backup
is kept. Each change names only the values it changes. Pruning considers complete ``manual``
and ``scheduled`` backups that THIS home wrote (``backups.home_id``: a copy restored from
another home's backup never deletes that home's files; ``pre-restore`` ones stay until
deleted by hand) and never removes the newest backup that verified, nor the newest at all.

A restore that brings another home's schedule pauses it (``paused_reason``): no scheduled
run until the administrator confirms or changes the destination with
``ams backup schedule set --dest DIR``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ams import audit
from ams.backup import catalog
from ams.backup.create import BackupResult, create_backup
from ams.backup.verify import verify_backup
from ams.db.models.backups import BackupRecord, BackupSchedule
from ams.errors import AMSError, BadInput
from ams.home import fsync_dir
from ams.instance import Instance
from ams.paths import check_folder

__all__ = [
    "ScheduleSettings",
    "check_destination",
    "due_at",
    "get_settings",
    "parse_duration",
    "paused_reason",
    "prune",
    "run_due",
    "run_scheduled",
    "set_settings",
]

DEFAULT_AT = catalog.SCHEDULE_DEFAULT_AT  # "02:00"
DEFAULT_RETAIN_DAYS = catalog.SCHEDULE_DEFAULT_RETAIN_DAYS  # 14
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class ScheduleSettings:
    at: str | None = DEFAULT_AT
    every_seconds: int | None = None
    destination: str | None = None
    retain_days: int | None = DEFAULT_RETAIN_DAYS
    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None

    @property
    def keep_policy(self) -> bool:
        return any(
            v is not None for v in (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
        )

    def describe(self) -> str:
        when = f"daily at {self.at} UTC" if self.at else f"every {format_duration(self.every_seconds or 0)}"
        days = self.retain_days or 0
        rules = [f"retain {days} days"] if days else []
        if self.keep_policy:
            keep = ", ".join(
                f"{n} {k}"
                for k, n in (
                    ("last", self.keep_last),
                    ("daily", self.keep_daily),
                    ("weekly", self.keep_weekly),
                    ("monthly", self.keep_monthly),
                )
                if n
            )
            if keep:
                rules.append(f"keep {keep}")
        return f"{when}; {' and '.join(rules)}" if rules else f"{when}; retain every backup"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise BadInput(
            f"--every {text!r} is not a duration: give a number and a unit, like 6h, 30m, 1d or 1w"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 300:
        raise BadInput("--every must be at least 5m: backups more frequent than that would overlap")
    return seconds


def format_duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_at(text: str) -> str:
    match = re.match(r"^([01]?\d|2[0-3]):([0-5]\d)$", text.strip())
    if not match:
        raise BadInput(f"--at {text!r} is not a time: give HH:MM in UTC, like 02:00")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def _settings_of(row: BackupSchedule | None) -> ScheduleSettings:
    if row is None:
        return ScheduleSettings()
    return ScheduleSettings(
        at=row.at_time,
        every_seconds=row.every_seconds,
        destination=row.destination,
        retain_days=row.retain_days,
        keep_last=row.keep_last,
        keep_daily=row.keep_daily,
        keep_weekly=row.keep_weekly,
        keep_monthly=row.keep_monthly,
    )


def get_settings(instance: Instance) -> ScheduleSettings:
    with instance.session() as session:
        return _settings_of(session.get(BackupSchedule, 1))


def _row(session: Session) -> BackupSchedule:
    row = session.get(BackupSchedule, 1)
    if row is None:
        row = BackupSchedule(
            id=1,
            at_time=DEFAULT_AT,
            retain_days=DEFAULT_RETAIN_DAYS,
            consecutive_failures=0,
            failures_total=0,
        )
        session.add(row)
    return row


def set_settings(
    instance: Instance,
    *,
    actor: str,
    at: str | None = None,
    every: str | None = None,
    destination: Path | None = None,
    retain_days: int | None = None,
    keep_last: int | None = None,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    create: bool = False,
) -> ScheduleSettings:
    """Change what is given; the rest stays (retention rules too: they combine, see above).

    Validates everything before writing. ``destination`` must be a folder this process can
    write to; one that does not exist is refused unless ``create`` (then made 0700).
    """
    if at is not None and every is not None:
        raise BadInput("choose one of --at and --every")
    keeps = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
    }
    given_keeps = {k: v for k, v in keeps.items() if v is not None}
    if retain_days is not None and not 0 <= retain_days <= 365:
        raise BadInput("--retain-days must be between 0 and 365 (0: no age rule)")
    for name, value in given_keeps.items():
        if not 0 <= value <= 10000:
            raise BadInput(f"--{name.replace('_', '-')} must be between 0 and 10000 (0: no such rule)")
    if create and destination is None:
        raise BadInput("--create goes with --dest: it creates the destination folder")
    at_value = parse_at(at) if at is not None else None
    every_value = parse_duration(every) if every is not None else None
    dest = check_destination(destination, create=create) if destination is not None else None
    dest_value = str(dest) if dest is not None else None
    with instance.transaction() as session:
        row = _row(session)
        if at_value is not None:
            row.at_time, row.every_seconds = at_value, None
        if every_value is not None:
            row.at_time, row.every_seconds = None, every_value
        resumed = dest_value is not None and bool(row.paused_reason)
        if dest_value is not None:
            row.destination = dest_value
            row.paused_reason = None  # the administrator chose the destination: runs resume
        if retain_days is not None:
            row.retain_days = retain_days
        for name, value in given_keeps.items():
            setattr(row, name, value or None)
        row.updated_at = instance.clock.now()
        result = _settings_of(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.BACKUP_SCHEDULE_CHANGED,
            actor=actor,
            details={**result.to_dict(), **({"resumed": True} if resumed else {})},
        )
    return result


def check_destination(destination: Path, *, create: bool = False) -> Path:
    """The absolute destination folder, refused with one line unless this process can write
    backups there. A missing folder is made (0700, with its parents) only with ``create``."""
    return check_folder(destination, "--dest", create=create)


def _next_at(at: str, after: datetime) -> datetime:
    hour, minute = (int(p) for p in at.split(":"))
    candidate = datetime.combine(after.date(), time(hour, minute), tzinfo=after.tzinfo)
    if candidate <= after:
        candidate += timedelta(days=1)
    return candidate


def due_at(instance: Instance) -> datetime:
    """When the next scheduled run is due (it may be in the past: then it runs now)."""
    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        settings = _settings_of(row)
        reference = row.last_run_at if row is not None else None
        if reference is None:
            reference = (row.updated_at if row is not None else None) or _instance_created(session)
    if settings.every_seconds:
        return reference + timedelta(seconds=settings.every_seconds)
    return _next_at(settings.at or DEFAULT_AT, reference)


def _instance_created(session: Any) -> datetime:
    from ams.db.models import InstanceRow

    created: datetime = session.scalars(select(InstanceRow.created_at)).one()
    return created


def _keep_set(rows: list[BackupRecord], settings: ScheduleSettings, now: datetime) -> set[str]:
    """Ids to keep by the policy alone (rows newest first): what any rule keeps."""
    days = settings.retain_days or 0
    if not days and not any(
        (settings.keep_last, settings.keep_daily, settings.keep_weekly, settings.keep_monthly)
    ):
        return {r.id for r in rows}  # no rule: nothing is pruned
    keep: set[str] = set()
    if days:
        cutoff = now - timedelta(days=days)
        keep |= {r.id for r in rows if r.created_at >= cutoff}
    keep |= {r.id for r in rows[: settings.keep_last or 0]}
    rules = (
        (settings.keep_daily, lambda d: d.date()),
        (settings.keep_weekly, lambda d: tuple(d.isocalendar())[:2]),
        (settings.keep_monthly, lambda d: (d.year, d.month)),
    )
    for count, period in rules:
        if not count:
            continue
        seen: list[Any] = []
        for row in rows:
            key = period(row.created_at)
            if key in seen:
                continue
            seen.append(key)
            keep.add(row.id)
            if len(seen) >= count:
                break
    return keep


def prune(instance: Instance, *, actor: str, settings: ScheduleSettings | None = None) -> list[str]:
    """Delete the backups the retention policy no longer keeps; return their ids."""
    settings = settings or get_settings(instance)
    now = instance.clock.now()
    home_id = instance.home_id
    if not home_id:
        return []  # no identity: nothing is provably this home's
    _finish_interrupted_prunes(instance, home_id)
    with instance.session() as session:
        rows = list(
            session.scalars(
                select(BackupRecord)
                .where(
                    BackupRecord.status == "complete",
                    BackupRecord.kind.in_(("manual", "scheduled")),
                    BackupRecord.home_id == home_id,  # only what this home wrote
                )
                .order_by(BackupRecord.created_at.desc(), BackupRecord.id)
            )
        )
    if not rows:
        return []
    keep = _keep_set(rows, settings, now)
    keep.add(rows[0].id)  # the newest backup
    verified = next((r for r in rows if r.verified_ok), None)
    if verified is not None:
        keep.add(verified.id)  # the newest backup that verified
    removed: list[str] = []
    for row in rows:
        if row.id in keep:
            continue
        # The row (and event 1504) first, the file after: a crash in between leaves an
        # archive nobody lists, which the next prune removes; never a listed backup whose
        # file is gone.
        with instance.transaction() as session:
            gone = session.get(BackupRecord, row.id)
            if gone is not None:
                session.delete(gone)
            audit.record(
                session,
                instance.clock,
                audit.Event.BACKUP_PRUNED,
                actor=actor,
                target=row.id,
                details={"file": row.path, "policy": settings.describe()},
            )
        if row.path:
            _unlink(Path(row.path))
        removed.append(row.id)
    return removed


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def _finish_interrupted_prunes(instance: Instance, home_id: str) -> None:
    """Archives whose pruning was recorded (1504) but whose file a crash kept: removed now,
    when the file there is still the pruned backup (its header names it and this home)."""
    with instance.session() as session:
        pruned = audit.list_events(session, event_id=int(audit.Event.BACKUP_PRUNED), limit=200)
        listed = set(session.scalars(select(BackupRecord.path).where(BackupRecord.path.is_not(None))))
    for event in pruned:
        file = event.details.get("file")
        if not isinstance(file, str) or file in listed or not Path(file).is_file():
            continue
        try:
            found = catalog._read_header(Path(file), instance.id, None)
        except (AMSError, OSError):
            continue
        if found is not None and (found.backup_id, found.home_id) == (event.target, home_id):
            _unlink(Path(file))


def run_scheduled(instance: Instance, *, actor: str = "scheduler") -> dict[str, Any]:
    """One scheduled run: back up, verify, prune. A failure is recorded, never raised."""
    settings = get_settings(instance)
    started = instance.clock.now()
    dest = catalog.default_destination(instance)  # this home's backups/ while paused
    result: BackupResult | None = None
    try:
        result = create_backup(instance, dest=dest, kind="scheduled", actor=actor)
        try:
            verify_backup(result.path, instance=instance, clock=instance.clock)
            ok, error = True, None
        except AMSError as exc:
            ok, error = False, exc.message
        with instance.transaction() as session:
            catalog.mark_verified(session, result.backup_id, instance.clock.now(), ok, error)
            audit.record(
                session,
                instance.clock,
                audit.Event.BACKUP_VERIFIED,
                actor=actor,
                target=result.backup_id,
                outcome="success" if ok else "failure",
                details={"deep": False, "ok": ok, "error": error},
            )
        if not ok:
            raise AMSError(f"the backup just written did not verify: {error}")
        pruned = prune(instance, actor=actor, settings=settings)
        with instance.transaction() as session:
            row = _row(session)
            row.last_run_at = started
            row.last_result = "success"
            row.last_error = None
            row.last_success_at = instance.clock.now()
            row.consecutive_failures = 0
        return {
            "ok": True,
            "backup": result.to_dict(),
            "pruned": pruned,
            "offsite": _copy_offsite(instance, actor),
        }
    except Exception as exc:  # noqa: BLE001 - a scheduled run must never kill the scheduler
        message = exc.message if isinstance(exc, AMSError) else f"{type(exc).__name__}: {exc}"
        with instance.transaction() as session:
            row = _row(session)
            row.last_run_at = started
            row.last_result = "failure"
            row.last_error = message
            row.consecutive_failures = (row.consecutive_failures or 0) + 1
            row.failures_total = (row.failures_total or 0) + 1
            if result is None:
                catalog.add_failed(
                    session,
                    backup_id="bk_" + secrets.token_hex(8),
                    kind="scheduled",
                    at=started,
                    fingerprint=instance.keyring.fingerprint,
                    error=message,
                )
            audit.record(
                session,
                instance.clock,
                audit.Event.BACKUP_FAILED,
                actor=actor,
                outcome="failure",
                details={"kind": "scheduled", "destination": str(dest), "reason": message},
            )
        return {"ok": False, "error": message}


def _copy_offsite(instance: Instance, actor: str) -> list[dict[str, Any]]:
    """Copy the new backup, and whatever an earlier run could not, to every offsite target.
    A failure there is recorded (ams.backup.offsite) and never fails the run."""
    from ams.backup.offsite import copy_pending

    try:
        return [o.to_dict() for o in copy_pending(instance, actor=actor)]
    except Exception as exc:  # noqa: BLE001 - the local backup stands whatever happens offsite
        message = exc.message if isinstance(exc, AMSError) else type(exc).__name__
        return [{"ok": False, "error": message}]


def run_due(instance: Instance, *, actor: str = "scheduler") -> dict[str, Any] | None:
    """Run the scheduled backup when it is due; None when it is not, or while paused."""
    if paused_reason(instance) is not None or instance.clock.now() < due_at(instance):
        return None
    return run_scheduled(instance, actor=actor)


def paused_reason(instance: Instance) -> str | None:
    """Why scheduled backups wait for the administrator (a restore brought another home's
    destination), or None when they run."""
    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        return row.paused_reason if row is not None else None


def schedule_status(instance: Instance) -> dict[str, Any]:
    """For ``ams status``, ``/metrics`` and the API: the schedule, the last run, the next one."""
    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        last = session.scalars(
            select(BackupRecord).order_by(BackupRecord.created_at.desc(), BackupRecord.id).limit(1)
        ).first()
        last_ok = session.scalars(
            select(BackupRecord)
            .where(BackupRecord.status == "complete")
            .order_by(BackupRecord.created_at.desc(), BackupRecord.id)
            .limit(1)
        ).first()
        settings = _settings_of(row)
    return {
        "schedule": settings.describe(),
        "paused": row.paused_reason if row is not None else None,
        "next_scheduled": due_at(instance).isoformat(),
        "last_backup": (
            {
                "backup_id": last.id,
                "kind": last.kind,
                "at": last.created_at.isoformat(),
                "result": "success" if last.status == "complete" else "failure",
                "error": last.error,
                "path": last.path,
            }
            if last
            else None
        ),
        "last_success_at": last_ok.created_at.isoformat() if last_ok else None,
        "last_success_size_bytes": last_ok.size_bytes if last_ok else None,
        "last_success_duration_seconds": last_ok.duration_seconds if last_ok else None,
        "last_scheduled_run": (
            {"at": row.last_run_at.isoformat(), "result": row.last_result, "error": row.last_error}
            if row is not None and row.last_run_at
            else None
        ),
        "failures_total": row.failures_total if row is not None else 0,
        "consecutive_failures": row.consecutive_failures if row is not None else 0,
    }
