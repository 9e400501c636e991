"""/api/v1/devices: devices and their passwords, for administrators and readers (API keys)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

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

    def read() -> dict[str, Any]:
        # The API key's check and the read in one hand-off to a worker thread (the read
        # decrypts: RSA stays off the event loop), not one for each.
        key = apikeys.authenticate(instance, token, Role.READER, address=address)
        return passwords.read(instance, device, f"apikey:{key.id}", history=history, via="api")

    return JSONResponse(await run_in_threadpool(read))


@router.post("/{device}/approve")
def approve_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return devices.approve(instance, device, f"apikey:{key.id}").to_dict()


@router.post("/{device}/expire")
def expire_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Make the device rotate at its next check-in (reason ``forced``)."""
    return {"expired": devices.expire(instance, f"apikey:{key.id}", device=device)}
