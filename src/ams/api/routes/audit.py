"""/api/v1/audit"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from ams import audit
from ams.api import limits
from ams.api.deps import CurrentInstance, ReaderKey

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], max_body_size=limits.NO_BODY)


@router.get("")
def list_events(
    instance: CurrentInstance,
    _key: ReaderKey,
    since: datetime | None = None,
    event_id: int | None = None,
    limit: int = Query(1000, ge=1, le=100000),
) -> list[dict[str, Any]]:
    with instance.session() as session:
        return [e.to_dict() for e in audit.list_events(session, since=since, event_id=event_id, limit=limit)]
