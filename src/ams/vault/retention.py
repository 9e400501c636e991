"""History retention: which old passwords of a device may go.

A history password is removed only when it is beyond BOTH limits of the policy: more than
``history_keep_count`` newer history passwords exist, AND it left service (was superseded)
more than ``history_keep_days`` days ago. Age counts from ``superseded_at`` because what a
restore needs is the password that was *in use* at the restore point. A password superseded
inside the rollback window is never removed, so an undo can always bring it back.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ams import audit
from ams.clock import Clock
from ams.db.models.vault import DevicePassword
from ams.vault.policy import PasswordPolicy

__all__ = ["ROLLBACK_WINDOW", "apply", "expendable"]

ROLLBACK_WINDOW = timedelta(seconds=60)


def expendable(
    session: Session, clock: Clock, device_id: str, policy: PasswordPolicy
) -> list[tuple[int, int]]:
    """(row id, version) of the history passwords retention would remove now."""
    now = clock.now()
    rows = session.execute(
        select(DevicePassword.id, DevicePassword.version, DevicePassword.superseded_at)
        .where(DevicePassword.device_id == device_id, DevicePassword.is_current.is_(False))
        .order_by(DevicePassword.superseded_at.desc(), DevicePassword.version.desc())
    ).all()
    keep_until = now - timedelta(days=policy.history_keep_days)
    window_start = now - ROLLBACK_WINDOW
    gone = []
    for index, (row_id, version, superseded_at) in enumerate(rows):
        if index < policy.history_keep_count:
            continue
        if superseded_at is None or superseded_at >= keep_until or superseded_at >= window_start:
            continue
        gone.append((row_id, version))
    return gone


def apply(session: Session, clock: Clock, device_id: str, policy: PasswordPolicy, actor: str) -> list[int]:
    """Remove what the policy lets go (inside the caller's transaction); the versions removed."""
    gone = expendable(session, clock, device_id, policy)
    if not gone:
        return []
    session.execute(
        delete(DevicePassword)
        .where(DevicePassword.id.in_([row_id for row_id, _ in gone]))
        .execution_options(synchronize_session=False)
    )
    versions = sorted(version for _, version in gone)
    audit.record(
        session,
        clock,
        audit.Event.PASSWORD_HISTORY_PRUNED,
        actor=actor,
        target=device_id,
        details={
            "versions": versions,
            "keep_count": policy.history_keep_count,
            "keep_days": policy.history_keep_days,
        },
    )
    return versions
