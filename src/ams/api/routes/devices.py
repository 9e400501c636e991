"""/api/v1/devices: devices and their passwords, for administrators and readers (API keys)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey
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


@router.get("/{device}/password")
def read_password(
    device: str, instance: CurrentInstance, key: ReaderKey, history: bool = False
) -> dict[str, Any]:
    """The device's password, decrypted (with ``history=true`` the older ones too). Always audited."""
    return passwords.read(instance, device, f"apikey:{key.id}", history=history, via="api")


@router.post("/{device}/approve")
def approve_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return devices.approve(instance, device, f"apikey:{key.id}").to_dict()


@router.post("/{device}/expire")
def expire_device(device: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Make the device rotate at its next check-in (reason ``forced``)."""
    return {"expired": devices.expire(instance, f"apikey:{key.id}", device=device)}
