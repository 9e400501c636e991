"""/api/v1/apikeys"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from ams import apikeys
from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, UnlockedBox

router = APIRouter(prefix="/api/v1/apikeys", tags=["apikeys"], max_body_size=limits.ADMIN_JSON)


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: apikeys.Role = apikeys.Role.READER


@router.get("")
def list_keys(
    instance: CurrentInstance, _key: AdminKey, include_revoked: bool = False
) -> list[dict[str, Any]]:
    return [k.to_dict() for k in apikeys.list_keys(instance, include_revoked=include_revoked)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_key(
    body: ApiKeyCreate, instance: CurrentInstance, key: AdminKey, _box: UnlockedBox
) -> dict[str, Any]:
    """Create a key; the answer holds its secret, the only time it is shown."""
    return apikeys.create(instance, body.name, body.role, f"apikey:{key.id}").to_dict()


@router.delete("/{key_id}")
def revoke_key(key_id: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return apikeys.revoke(instance, key_id, f"apikey:{key.id}").to_dict()
