"""/healthz and /metrics: for load balancers and Prometheus, without credentials."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ams.api import limits
from ams.api.deps import CurrentInstance

router = APIRouter(max_body_size=limits.NO_BODY)


@router.get("/healthz", tags=["health"])
def healthz(instance: CurrentInstance) -> dict[str, Any]:
    """``ok``, or ``degraded`` while the master key is locked (the process itself is fine,
    so this stays 200: a restart would not help; `ams security unlock` does)."""
    database = "ok"
    try:
        with instance.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means the database is not answering
        database = "unavailable"
    # A locked instance looks again for a service key (`ams security unlock` may have run).
    state = str(instance.keyring.try_service_unlock())
    healthy = database == "ok" and state == "unlocked"
    return {"status": "ok" if healthy else "degraded", "master_key": state, "database": database}


@router.get("/metrics", tags=["health"])
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
