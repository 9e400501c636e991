"""/api/v1/agent: what ams-agent calls (docs/agent-api.md). Device tokens, not API keys."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ams.api import limits
from ams.api.deps import CurrentInstance, client_address
from ams.errors import BadInput, DeviceTokenInvalid
from ams.vault import devices, passwords
from ams.vault.devices import AuthenticatedDevice

router = APIRouter(prefix="/api/v1/agent", tags=["agent"], max_body_size=limits.AGENT_JSON)


def _device_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise DeviceTokenInvalid("no device token: send `Authorization: Bearer <device id>.<secret>`")
    return token.strip()


def current_device(request: Request, instance: CurrentInstance) -> AuthenticatedDevice:
    """The device whose token the request carries; only active devices pass."""
    return devices.authenticate(instance, _device_token(request), address=client_address(request))


AgentDevice = Annotated[AuthenticatedDevice, Depends(current_device)]


class RegisterBody(BaseModel):
    registration_key: str = Field(min_length=1, max_length=512)
    name: str = Field(min_length=1, max_length=255)
    # A directory id binds the device to its computer object ``dn`` there (directory mode).
    scope: str = Field(default="agent", max_length=64)
    dn: str | None = Field(default=None, min_length=1, max_length=2048)


class PasswordBody(BaseModel):
    account: str = Field(min_length=1, max_length=64)
    # A JSON integer (not "3", true or 3.0); its range is the vault's (passwords.store).
    version: int = Field(strict=True)
    blob: str = Field(min_length=1, max_length=4 * passwords.MAX_BLOB_BYTES)


@router.post("/register", status_code=status.HTTP_201_CREATED)
def register(body: RegisterBody, request: Request, instance: CurrentInstance) -> dict[str, Any]:
    """Register a device with a registration key; the answer holds its token, shown once.

    With ``scope`` a directory id and ``dn`` an existing entry of it, the device is bound to
    that computer object and stores its password there over LDAP (docs/agent-api.md)."""
    return devices.register(
        instance,
        body.registration_key,
        body.name,
        scope=body.scope,
        dn=body.dn,
        address=client_address(request),
    ).to_dict()


# Longer than any version (2**53 - 1 has 16 digits), so a damaged state file's number is
# still read, and then not built on (passwords.decide); longer still is refused.
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,63}")


def _version(value: str | None) -> int | None:
    """The query's version as a number; which numbers mean something is the vault's to say."""
    if value is None or not value.strip():
        return None
    if not _WHOLE_NUMBER.fullmatch(value.strip()):
        raise BadInput(f"version={value[:20]!r} is not a whole number: send the last version, or nothing")
    return int(value.strip())


# The check-in and the report are the hot path (docs/architecture.md): the vault
# authenticates the token and does the work on one database connection, called right here
# in the event loop (a hand-off to a thread and back cost more than the work: with
# `--workers N`, the other workers' loops answer meanwhile); the answer is a JSONResponse,
# not a dict for FastAPI to validate and encode again. Only the generation of a scope's
# first certificate (seconds of RSA key generation) goes to a thread.


@router.get("/password", response_model=None)
async def rotation_advice(
    request: Request, version: Annotated[str | None, Query(max_length=64)] = None
) -> JSONResponse:
    """Whether to rotate now and why (new, expired, forced, rollback), the certificate and the policy."""
    instance = request.app.state.instance
    token = _device_token(request)
    reported = _version(version)
    address = client_address(request)
    try:
        advice = passwords.check_in(instance, token, reported, address=address, generate=False)
    except passwords.FirstCertificateNeeded:
        # The scope's first certificate: generated (and the check-in answered) in a thread.
        advice = await run_in_threadpool(passwords.check_in, instance, token, reported, address=address)
    return JSONResponse(advice.to_dict())


@router.post(
    "/password", status_code=status.HTTP_201_CREATED, max_body_size=limits.AGENT_PASSWORD, response_model=None
)
async def report_password(body: PasswordBody, request: Request) -> JSONResponse:
    """Report the new password, encrypted to the active certificate; the server test-decrypts it."""
    stored = passwords.report(
        request.app.state.instance,
        _device_token(request),
        body.account,
        body.version,
        body.blob,
        address=client_address(request),
    )
    return JSONResponse(stored.to_dict(), status_code=status.HTTP_201_CREATED)


@router.delete("/password/{request_id}")
def undo_password(request_id: str, instance: CurrentInstance, device: AgentDevice) -> dict[str, Any]:
    """Undo the last update within 60 seconds, when the device could not set the password."""
    return {"restored_version": passwords.undo(instance, device, request_id)}
