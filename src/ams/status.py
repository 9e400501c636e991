"""``ams status``: one picture of the instance, for people and for monitoring."""

from __future__ import annotations

import stat
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ams import __version__
from ams.db import migrate
from ams.db.engine import describe_url
from ams.db.models import ApiKey, AuditEvent
from ams.home import Home
from ams.instance import Instance

__all__ = ["instance_status", "permission_warnings"]


def instance_status(instance: Instance) -> dict[str, Any]:
    keyring = instance.keyring
    set_at = keyring.recovery_password_set_at()
    pid = instance.service_pid()
    with instance.session() as session:
        counts = {
            "api_keys": session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
            ),
            "audit_events": session.scalar(select(func.count()).select_from(AuditEvent)),
        }
    return {
        "instance_id": instance.id,
        "home": str(instance.home.root),
        "ams_version": __version__,
        "database": {
            "engine": instance.engine_name,
            "url": (
                describe_url(instance.settings.database.url)
                if instance.settings.database.url
                else str(instance.home.sqlite_path)
            ),
            "revision": migrate.current_revision(instance.engine),
            "head": migrate.head_revision(),
        },
        "master_key": {
            "state": str(keyring.state),
            "fingerprint": keyring.fingerprint,
            "service_key": keyring.source.describe(),
            "locked_reason": keyring.lock_reason,
        },
        "recovery_password_set_at": set_at.isoformat() if set_at else None,
        "recovery_password_notice": _recovery_notice(instance, set_at),
        "home_id": instance.home_id,
        "service": {"running": pid is not None, "pid": pid or None},
        "counts": counts,
        "backup": _backup_status(instance),
        "offsite": _offsite_status(instance),
        "audit": _audit_status(instance),
        "warnings": permission_warnings(instance.home),
    }


def permission_warnings(home: Home) -> list[str]:
    """The home, its folders and the files holding secrets that other users may read or enter
    (AMS creates them 0700 and 0600 whatever the umask; a copy or a chmod can loosen them)."""
    db = home.sqlite_path
    paths = [
        home.root,
        home.keys_dir,
        home.service_key_file,
        home.data_dir,
        db,
        db.with_name(db.name + "-wal"),
        db.with_name(db.name + "-shm"),
        home.config_dir,
        home.config_file,
        home.backups_dir,
        home.snapshots_dir,
        home.run_dir,
    ]
    warnings: list[str] = []
    for path in paths:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode) or not mode & 0o077:
            continue
        folder = stat.S_ISDIR(mode)
        who = "other users" if mode & 0o007 else "the group"
        warnings.append(
            f"{path} can be {'opened' if folder else 'read'} by {who} (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod {'700' if folder else '600'} {_quoted(path)}`"
        )
    return warnings


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _recovery_notice(instance: Instance, set_at: datetime | None) -> str | None:
    """Issue 17: after a restore brought back the backup's recovery password, say so until
    a new one is set (the 1503 event records it; ams.backup.restore)."""
    from ams import audit

    with instance.session() as session:
        restored = audit.list_events(session, event_id=int(audit.Event.BACKUP_RESTORED), limit=1)
    if not restored or set_at is None:
        return None
    recovery = restored[-1].details.get("recovery_password")
    if not isinstance(recovery, dict) or not recovery.get("notice"):
        return None
    if recovery.get("set_at") != set_at.isoformat():
        return None  # a new recovery password was set since
    return str(recovery["notice"])


def _backup_status(instance: Instance) -> dict[str, Any]:
    """Issue 4: the last backup, its result, the next scheduled one (ams.backup.schedule)."""
    from ams.backup.schedule import schedule_status

    return schedule_status(instance)


def _offsite_status(instance: Instance) -> list[dict[str, Any]]:
    """Issue 16: per offsite target, the last copy, its state and age (ams.backup.offsite)."""
    from ams.backup.offsite import offsite_status

    return offsite_status(instance)


def _audit_status(instance: Instance) -> dict[str, Any]:
    """Issue 18: the audit trail's size, its oldest event and its retention (ams.audit_retention)."""
    from ams.audit_retention import trail_size

    return {**trail_size(instance).to_dict(), "retention_days": instance.settings.audit.retention_days}
