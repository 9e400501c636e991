"""Audit events: what happened, who did it, when, with a stable numeric id.

The ids are a contract (SIEM rules match on them): never renumber, never reuse. Each
range belongs to one capability; docs/events.md lists them all and a test checks that the
document and this enum agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ams.clock import Clock, as_utc
from ams.db.models import AuditEvent

__all__ = ["Event", "EventRecord", "list_events", "record"]


class Event(IntEnum):
    # 1000-1099: the instance and its service
    INSTANCE_CREATED = 1000
    SERVICE_STARTED = 1001
    SERVICE_STOPPED = 1002
    SCHEMA_UPGRADED = 1003
    # 1100-1199: the master key and the recovery password
    RECOVERY_PASSWORD_SET = 1100
    MASTER_KEY_UNLOCKED = 1101
    MASTER_KEY_UNLOCK_FAILED = 1102
    SERVICE_KEY_REPLACED = 1103
    # 1200-1299: API keys and authentication
    API_KEY_CREATED = 1200
    API_KEY_REVOKED = 1201
    API_AUTH_FAILED = 1202

    @property
    def label(self) -> str:
        return self.name.lower()


DESCRIPTIONS: dict[Event, str] = {
    Event.INSTANCE_CREATED: "`ams init` created the instance and its master key",
    Event.SERVICE_STARTED: "`ams serve` started (details: master key state, address)",
    Event.SERVICE_STOPPED: "`ams serve` stopped cleanly",
    Event.SCHEMA_UPGRADED: "the database schema was migrated forward (details: from, to)",
    Event.RECOVERY_PASSWORD_SET: "a new recovery password replaced the recovery wrapping",
    Event.MASTER_KEY_UNLOCKED: "the recovery password unlocked the master key on this machine",
    Event.MASTER_KEY_UNLOCK_FAILED: "an unlock with the recovery password failed (wrong password)",
    Event.SERVICE_KEY_REPLACED: "a new service key and service wrapping were written",
    Event.API_KEY_CREATED: "an API key was created (target: key id; details: name, role)",
    Event.API_KEY_REVOKED: "an API key was revoked (target: key id)",
    Event.API_AUTH_FAILED: "an API request presented an unknown, revoked or wrong key",
}


@dataclass(frozen=True)
class EventRecord:
    seq: int
    event_id: int
    name: str
    at: datetime
    actor: str
    outcome: str
    target: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "name": self.name,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "outcome": self.outcome,
            "target": self.target,
            "details": self.details,
        }


def record(
    session: Session,
    clock: Clock,
    event: Event,
    *,
    actor: str,
    target: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the session; it commits with the change it describes."""
    session.add(
        AuditEvent(
            event_id=int(event),
            at=clock.now(),
            actor=actor,
            outcome=outcome,
            target=target,
            details=json.dumps(details or {}, sort_keys=True),
        )
    )


def _name(event_id: int) -> str:
    try:
        return Event(event_id).label
    except ValueError:
        return f"unknown_{event_id}"


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    event_id: int | None = None,
    limit: int = 1000,
) -> list[EventRecord]:
    """The newest ``limit`` events matching, oldest first."""
    query = select(AuditEvent).order_by(AuditEvent.seq.desc())
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if event_id is not None:
        query = query.where(AuditEvent.event_id == event_id)
    rows = list(reversed(session.scalars(query.limit(limit)).all()))
    return [
        EventRecord(
            seq=r.seq,
            event_id=r.event_id,
            name=_name(r.event_id),
            at=as_utc(r.at),
            actor=r.actor,
            outcome=r.outcome,
            target=r.target,
            details=json.loads(r.details or "{}"),
        )
        for r in rows
    ]
