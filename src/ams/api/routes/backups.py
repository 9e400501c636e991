"""/api/v1/backups: list the catalog, back up now, the schedule's status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ams import backup
from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey

router = APIRouter(prefix="/api/v1/backups", tags=["backups"], max_body_size=limits.NO_BODY)


@router.get("")
def list_backups(instance: CurrentInstance, _key: ReaderKey) -> list[dict[str, Any]]:
    """Every backup attempt, newest first."""
    return [e.to_dict() for e in backup.list_backups(instance)]


@router.post("", status_code=201)
def create_backup(instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Back up now, to the schedule's destination (synchronous: answers when the file is written)."""
    result = backup.create_backup(instance, actor=f"apikey:{key.id}")
    return result.to_dict()


@router.get("/status")
def backup_status(instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    """The schedule, the last backup and its result, the next scheduled run."""
    return backup.schedule_status(instance)
