"""The console's Overview: the state of the instance, its counts, and what needs attention.

The same facts as ``ams status`` (``ams.status.instance_status``), plus the counts and the
warnings an administrator should see first. The page only renders what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ams.instance import Instance
from ams.status import instance_status

__all__ = ["EXPIRY_WARNING", "Warning", "console_overview"]

# An active certificate that ends within this long is worth a warning: devices keep
# encrypting to it until a new one is published.
EXPIRY_WARNING = timedelta(days=90)
# No good backup for this long, with a schedule in place, is worth a warning.
_STALE_BACKUP = timedelta(days=2)


@dataclass(frozen=True)
class Warning:
    level: str  # "danger" or "warning"
    text: str


def _counts(instance: Instance) -> dict[str, Any]:
    from ams.db.models.directory import Directory
    from ams.db.models.vault import Device

    with instance.session() as session:
        devices = dict(session.execute(select(Device.status, func.count()).group_by(Device.status)).all())
        directories = session.scalar(
            select(func.count()).select_from(Directory).where(Directory.stage != "Deleted")
        )
    return {"devices": devices, "directories": directories or 0}


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _offsite_warnings(targets: list[dict[str, Any]], now: datetime) -> list[Warning]:
    """Issue 16: the last copy to a target failed, or its last good copy is too old."""
    out: list[Warning] = []
    for t in targets:
        last = t.get("last_copy")
        if last and last["state"] == "failed":
            out.append(
                Warning(
                    "danger",
                    f"The last copy to offsite target {t['name']} failed: {last['error']}. "
                    "The local backup is kept; the service retries.",
                )
            )
        good = _parse(t.get("last_success_at"))
        if good is not None and now - good > _STALE_BACKUP:
            out.append(
                Warning(
                    "warning", f"The last good offsite copy to {t['name']} is from {good:%Y-%m-%d %H:%M} UTC."
                )
            )
        elif good is None and t.get("missing"):
            out.append(Warning("warning", f"Offsite target {t['name']} holds no copy yet."))
        drill = t.get("last_drill")
        if drill and not drill["ok"]:
            out.append(
                Warning("danger", f"The last restore drill from {t['name']} failed: {drill['error']}.")
            )
    return out


def console_overview(instance: Instance) -> dict[str, Any]:
    from ams.vault import certificates

    status = instance_status(instance)
    now = instance.clock.now()
    certs = certificates.list_certificates(instance)
    warnings: list[Warning] = []
    master_key = status["master_key"]
    if master_key["state"] != "unlocked":
        warnings.append(
            Warning(
                "danger",
                "The master key is locked: passwords, backups and certificates cannot be used "
                "until it is unlocked with the recovery password (Security page or `ams security unlock`).",
            )
        )
    if status["recovery_password_set_at"] is None:
        warnings.append(
            Warning(
                "danger",
                "No recovery password is set: without the service key on this machine, nothing could be "
                "recovered. Set one on the Security page.",
            )
        )
    backup = status["backup"]
    last = backup.get("last_backup")
    if last and last["result"] == "failure":
        warnings.append(
            Warning("danger", f"The last backup failed: {last['error'] or 'see the audit trail'}.")
        )
    last_ok = _parse(backup.get("last_success_at"))
    if last_ok is None:
        warnings.append(
            Warning("warning", "No backup has been made yet: use Backup now on the Database page.")
        )
    elif now - last_ok > _STALE_BACKUP:
        warnings.append(Warning("warning", f"The last good backup is from {last_ok:%Y-%m-%d %H:%M} UTC."))
    warnings += _offsite_warnings(status.get("offsite") or [], now)
    for cert in certs:
        if cert.state == "lost" and cert.current_passwords:
            warnings.append(
                Warning(
                    "danger",
                    f"Certificate {cert.thumbprint} ({cert.scope}) is lost and {cert.current_passwords} "
                    "current passwords are still encrypted to it; they rotate at their next check-in.",
                )
            )
        elif cert.state == "active" and cert.not_after - now < EXPIRY_WARNING:
            warnings.append(
                Warning(
                    "warning",
                    f"The active certificate of {cert.scope} ends on {cert.not_after:%Y-%m-%d}: "
                    "generate and activate a new one.",
                )
            )
    from ams.backup import list_backups

    newest = next(iter(list_backups(instance, include_failed=False)), None)
    if newest is not None and newest.verified_ok is False:
        warnings.append(
            Warning("danger", f"The newest backup, {newest.backup_id}, did not verify: {newest.error}.")
        )
    size = None
    if status["database"]["engine"] == "sqlite":
        path = instance.home.sqlite_path
        size = path.stat().st_size if path.exists() else None
    return {
        "status": status,
        "database_size_bytes": size,
        "newest_backup": newest,
        "counts": {
            **_counts(instance),
            "certificates": {
                state: sum(1 for c in certs if c.state == state) for state in ("active", "standby", "lost")
            },
            "api_keys": status["counts"]["api_keys"],
            "audit_events": status["counts"]["audit_events"],
        },
        "warnings": warnings,
    }
