"""FastAPI dependencies: the open instance, authentication, the unlocked master key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ams import apikeys
from ams.apikeys import ApiKeyInfo, Role
from ams.crypto import SecretBox
from ams.instance import Instance

__all__ = [
    "AdminKey",
    "CurrentInstance",
    "ReaderKey",
    "UnlockedBox",
    "bearer_token",
    "client_address",
    "get_instance",
]


async def get_instance(request: Request) -> Instance:
    # async: FastAPI runs a plain function dependency in a worker thread, a hand-off that
    # only waits; this reads an attribute.
    instance: Instance = request.app.state.instance
    return instance


CurrentInstance = Annotated[Instance, Depends(get_instance)]


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    return _bearer(request)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def client_address(request: Request) -> str | None:
    """The peer's address, which failed authentication is counted against (uvicorn takes it
    from X-Forwarded-For only when the peer is a trusted proxy, by default 127.0.0.1)."""
    return request.client.host if request.client else None


def require_reader(request: Request, instance: CurrentInstance) -> ApiKeyInfo:
    return apikeys.authenticate(instance, _bearer(request), Role.READER, address=client_address(request))


def require_admin(request: Request, instance: CurrentInstance) -> ApiKeyInfo:
    return apikeys.authenticate(instance, _bearer(request), Role.ADMIN, address=client_address(request))


def unlocked_box(instance: CurrentInstance) -> SecretBox:
    """The secret box; answers 503 "master key locked" while the instance is locked."""
    return instance.keyring.box


ReaderKey = Annotated[ApiKeyInfo, Depends(require_reader)]
AdminKey = Annotated[ApiKeyInfo, Depends(require_admin)]
UnlockedBox = Annotated[SecretBox, Depends(unlocked_box)]
