"""/api/v1/devices: devices and their passwords, for administrators and readers (API keys)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection

from ams import apikeys
from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey, bearer_token, client_address
from ams.apikeys import Role
from ams.instance import Instance
from ams.vault import devices, passwords

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], max_body_size=limits.NO_BODY)


@router.get("")
def list_devices(
    instance: CurrentInstance, _key: ReaderKey, scope: str | None = None
) -> list[dict[str, Any]]:
    return [d.to_dict() for d in devices.list_devices(instance, scope=scope)]


@router.get("/{device}")
def show_device(device: str, instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    """A device by id (or by name, when only one device has it)."""
    return devices.show(instance, device).to_dict()


@router.get("/{device}/password", response_model=None)
async def read_password(device: str, request: Request, history: bool = False) -> JSONResponse:
    """The device's password, decrypted (with ``history=true`` the older ones too). Always audited."""
    instance: Instance = request.app.state.instance
    token, address = bearer_token(request), client_address(request)

    def reader(conn: Connection) -> str:
        # The API key is checked on the read's own connection, before anything is read.
        key = apikeys.authenticate(instance, token, Role.READER, address=address, conn=conn)
        return f"apikey:{key.id}"

    # An administrator's read is a hot path (docs/architecture.md): three statements and one
    # decryption, run right here in the event loop like the agent's report, because a hand-off
    # to a worker thread and back cost more than the work; the other workers answer meanwhile.
    return JSONResponse(passwords.read(instance, device, reader, history=history, via="api"))


@router.post("/{device}/approve")
def approve_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return devices.approve(instance, device, f"apikey:{key.id}").to_dict()


@router.post("/{device}/expire")
def expire_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Make the device rotate at its next check-in (reason ``forced``)."""
    return {"expired": devices.expire(instance, f"apikey:{key.id}", device=device)}
