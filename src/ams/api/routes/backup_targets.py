"""/api/v1/backups/targets: offsite targets (S3-compatible object storage), as `ams backup target`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey
from ams.backup import offsite, remote, targets

router = APIRouter(prefix="/api/v1/backups/targets", tags=["backups"], max_body_size=limits.ADMIN_JSON)


class TargetCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="1-64 lower-case letters, digits, - and _.")
    url: str = Field(min_length=6, max_length=1000, description="s3://BUCKET/PREFIX the copies go to.")
    endpoint_url: str | None = Field(None, max_length=300, description="An S3-compatible service; null: AWS.")
    region: str | None = Field(None, max_length=64)
    lock_days: int | None = Field(None, description="Object Lock each copy for N days (with lock_mode).")
    lock_mode: str | None = Field(None, description="governance or compliance.")
    keep_days: int | None = None
    keep_last: int | None = None
    access_key_id: str | None = Field(None, max_length=128, description="Null: the AWS chain of the service.")
    secret_access_key: str | None = Field(
        None, max_length=256, description="Sealed under the master key; never answered back."
    )
    drill_days: int | None = Field(None, description="A restore drill from this target every N days.")
    replace: bool = False


@router.get("")
def list_targets(instance: CurrentInstance, _key: ReaderKey) -> list[dict[str, Any]]:
    """The targets, each with the last copy to it, its state and age, and its last drill."""
    states = {s["name"]: s for s in offsite.offsite_status(instance)}
    return [{**t.to_dict(), "status": states.get(t.name)} for t in targets.list_targets(instance)]


@router.post("", status_code=status.HTTP_201_CREATED)
def add_target(body: TargetCreate, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Add a target (the bucket, and its Object Lock when a lock is asked, are checked first)."""
    target = targets.add_target(
        instance,
        name=body.name,
        url=body.url,
        actor=f"apikey:{key.id}",
        endpoint_url=body.endpoint_url,
        region=body.region,
        lock_days=body.lock_days,
        lock_mode=body.lock_mode,
        keep_days=body.keep_days,
        keep_last=body.keep_last,
        access_key_id=body.access_key_id,
        secret=body.secret_access_key,
        drill_days=body.drill_days,
        replace=body.replace,
    )
    return target.to_dict()


@router.delete("/{name}", max_body_size=limits.NO_BODY)
def remove_target(name: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Forget a target and its stored credentials; the objects stay in the bucket."""
    return targets.remove_target(instance, name, actor=f"apikey:{key.id}").to_dict()


@router.post("/{name}/test", max_body_size=limits.NO_BODY)
def test_target(name: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Write, read back and remove a probe object; an error names the missing permission."""
    return targets.test_target(instance, name, actor=f"apikey:{key.id}")


@router.post("/{name}/sync", max_body_size=limits.NO_BODY)
def sync_target(name: str, instance: CurrentInstance, key: AdminKey) -> list[dict[str, Any]]:
    """Copy now every verified backup the target lacks (synchronous); each outcome says ok or why not."""
    return [o.to_dict() for o in offsite.copy_pending(instance, actor=f"apikey:{key.id}", target=name)]


@router.get("/{name}/objects")
def target_objects(name: str, instance: CurrentInstance, _key: ReaderKey) -> list[dict[str, Any]]:
    """What the target's bucket holds (read from the bucket), newest first, with each lock."""
    return offsite.list_objects(instance, name)


@router.post("/{name}/drill", max_body_size=limits.NO_BODY)
def drill(name: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Restore the newest copy into a scratch home and deep-verify it (synchronous)."""
    return remote.drill(instance, name, actor=f"apikey:{key.id}")
