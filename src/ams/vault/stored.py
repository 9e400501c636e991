"""Counting and expiring stored passwords by certificate: what the certificates service
needs of the password rows (so that ams.vault.certificates does not import
ams.vault.passwords, which imports it: each module's dependencies run one way)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, case, func, select, update
from sqlalchemy.orm import Session

from ams.clock import Clock
from ams.db.models.vault import DevicePassword

__all__ = ["count_under", "counts_by_certificate", "expire_current_under"]


def expire_current_under(session: Session, clock: Clock, thumbprint: str) -> int:
    """Expire now every current password encrypted to ``thumbprint`` (each device rotates at its
    next check-in with reason "expired"); how many are current under it. Runs inside the
    caller's transaction.

    One statement, whose row count is the answer: each current row under the key gets the
    earlier of its expiry and now (a second statement counting them would read the same
    100,000 rows again when a key of a large fleet is lost)."""
    now = clock.now()
    result = session.execute(
        update(DevicePassword)
        .where(DevicePassword.is_current.is_(True), DevicePassword.certificate_thumbprint == thumbprint)
        .values(expires_at=case((DevicePassword.expires_at > now, now), else_=DevicePassword.expires_at))
        .execution_options(synchronize_session=False)
    )
    return int(cast("CursorResult[Any]", result).rowcount)


def count_under(session: Session, thumbprint: str) -> int:
    """How many passwords (current and history) are encrypted to ``thumbprint``: a count of the
    thumbprint's index alone, without reading the rows."""
    return (
        session.scalar(
            select(func.count())
            .select_from(DevicePassword)
            .where(DevicePassword.certificate_thumbprint == thumbprint)
        )
        or 0
    )


def counts_by_certificate(session: Session) -> dict[str, tuple[int, int]]:
    """thumbprint -> (current passwords, history passwords) encrypted to it."""
    counts: dict[str, list[int]] = {}
    rows = session.execute(
        select(DevicePassword.certificate_thumbprint, DevicePassword.is_current, func.count()).group_by(
            DevicePassword.certificate_thumbprint, DevicePassword.is_current
        )
    )
    for thumbprint, is_current, count in rows:
        counts.setdefault(thumbprint, [0, 0])[0 if is_current else 1] += count
    return {t: (c[0], c[1]) for t, c in counts.items()}
