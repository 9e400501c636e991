"""Audit retention: events older than ``[audit] retention_days`` days are pruned.

The service's audit job (:class:`AuditJobs`) prunes at start and every hour; ``ams audit
prune`` prunes on demand. One prune removes at most :data:`BATCH` events in one transaction
that also records event 1004 (so a removal and its record cannot exist without each
other); a larger backlog takes several, each with its event. ``retention_days = 0`` keeps
every event.

The retention in effect is on the record: when the setting differs from the one the
newest event 1005 names, a prune first records 1005 (from, to). Pruning never removes that
newest 1005, so the record stays however old it is.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from ams import audit
from ams.clock import ManualClock, as_utc
from ams.db.advisory import one_node
from ams.db.models import AuditEvent
from ams.instance import Instance
from ams.security.throttle import write_summaries

__all__ = ["BATCH", "AuditJobs", "PruneResult", "TrailSize", "prune", "trail_size"]

log = logging.getLogger("ams.audit")

BATCH = 50_000
PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class TrailSize:
    events: int
    oldest_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "oldest_at": self.oldest_at.isoformat() if self.oldest_at else None}


def trail_size(instance: Instance) -> TrailSize:
    """How many events the audit trail holds, and when the oldest happened."""
    with instance.session() as session:
        count, oldest = session.execute(select(func.count(), func.min(AuditEvent.at))).one()
    return TrailSize(int(count or 0), as_utc(oldest) if oldest is not None else None)


@dataclass(frozen=True)
class PruneResult:
    retention_days: int
    removed: int
    before: datetime | None  # events older than this were removed; None: retention 0
    retention_changed: dict[str, int | None] | None
    size: TrailSize

    def to_dict(self) -> dict[str, Any]:
        return {
            "retention_days": self.retention_days,
            "removed": self.removed,
            "before": self.before.isoformat() if self.before else None,
            "retention_changed": self.retention_changed,
            **self.size.to_dict(),
        }


def _newest_retention_event(session: Session) -> AuditEvent | None:
    return session.scalars(
        select(AuditEvent)
        .where(AuditEvent.event_id == int(audit.Event.AUDIT_RETENTION_CHANGED))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()


def _note_retention(instance: Instance, actor: str) -> dict[str, int | None] | None:
    """Record 1005 when the configured retention is not the one last recorded."""
    days = instance.settings.audit.retention_days
    with instance.transaction() as session:
        newest = _newest_retention_event(session)
        previous = json.loads(newest.details or "{}").get("to") if newest is not None else None
        if newest is not None and previous == days:
            return None
        change = {"from": previous, "to": days}
        audit.record(
            session, instance.clock, audit.Event.AUDIT_RETENTION_CHANGED, actor=actor, details=change
        )
        return change


def prune(instance: Instance, actor: str, *, record_nothing_removed: bool = True) -> PruneResult:
    """Remove the events older than the retention; record 1004 for each batch removed (and,
    with ``record_nothing_removed``, once when there was nothing to remove)."""
    changed = _note_retention(instance, actor)
    days = instance.settings.audit.retention_days
    if days == 0:
        return PruneResult(0, 0, None, changed, trail_size(instance))
    before = instance.clock.now() - timedelta(days=days)
    total = 0
    while True:
        with instance.transaction() as session:
            keep = _newest_retention_event(session)
            doomed = (
                select(AuditEvent.seq)
                .where(AuditEvent.at < before, AuditEvent.seq != (keep.seq if keep is not None else -1))
                .order_by(AuditEvent.seq)
                .limit(BATCH)
                .scalar_subquery()
            )
            removed = cast(
                "CursorResult[Any]",
                session.execute(
                    delete(AuditEvent)
                    .where(AuditEvent.seq.in_(doomed))
                    .execution_options(synchronize_session=False)
                ),
            ).rowcount
            if removed or (record_nothing_removed and total == 0):
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.AUDIT_PRUNED,
                    actor=actor,
                    details={"removed": removed, "before": before.isoformat(), "retention_days": days},
                )
        total += removed
        if removed < BATCH:
            break
    return PruneResult(days, total, before, changed, trail_size(instance))


# -- the service's job --------------------------------------------------------------------

# Any constant shared by every node; "AMSA" in ASCII.
ADVISORY_LOCK = 0x414D5341


class AuditJobs:
    """The thread in ``ams serve`` that keeps the audit trail: every ``poll`` seconds it
    writes the 1203 events of ended throttle windows, and every hour (and at start) it
    prunes. When the service stops it writes the current window's 1203 events too."""

    def __init__(self, instance: Instance, *, poll: float = 60.0) -> None:
        self.instance = instance
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune: datetime | None = None

    def start(self) -> None:
        if isinstance(self.instance.clock, ManualClock):
            # In-process tests move a ManualClock for their own reasons: they call tick().
            return
        self._thread = threading.Thread(target=self._loop, name="ams-audit-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            write_summaries(self.instance, close=True)
        except Exception:  # noqa: BLE001 - stopping goes on; the counts are in the log
            log.exception("the failed-authentication summaries could not be written at stop")

    def tick(self) -> dict[str, Any]:
        done: dict[str, Any] = {"summaries": write_summaries(self.instance), "pruned": None}
        now = self.instance.clock.now()
        if self._next_prune is None or now >= self._next_prune:
            with one_node(self.instance, ADVISORY_LOCK) as mine:
                if mine:
                    result = prune(self.instance, "service", record_nothing_removed=False)
                    done["pruned"] = result.to_dict()
                    if result.removed:
                        log.info("audit retention removed %d events before %s", result.removed, result.before)
            self._next_prune = now + PRUNE_EVERY
        return done

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the job outlives any one failure
                log.exception("the audit job met an error; it tries again later")
            self._stop.wait(self.poll)
