"""/api/v1/status"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ams.api import limits
from ams.api.deps import CurrentInstance, ReaderKey
from ams.status import instance_status

router = APIRouter(prefix="/api/v1", tags=["status"], max_body_size=limits.NO_BODY)


@router.get("/status")
def status(instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    return instance_status(instance)
