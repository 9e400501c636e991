"""Devices: registration with a registration key, device tokens, approval, forced rotation.

A device token is ``dev_<16 hex>.<secret>``; the database keeps only the SHA-256 of the
secret, and a token opens only its own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from sqlalchemy import CursorResult, and_, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.db.models.vault import ACTIVE, DISABLED, PENDING, Device, DevicePassword, RegistrationKey
from ams.errors import (
    AMSError,
    BadInput,
    Conflict,
    DeviceDisabled,
    DevicePendingApproval,
    DeviceTokenInvalid,
    NotFound,
    RegistrationKeyInvalid,
    RegistrationKeyRefused,
)
from ams.instance import Instance
from ams.security import throttle
from ams.textcheck import check_name
from ams.vault import binding as binding_service
from ams.vault.policy import check_scope

__all__ = [
    "ACTIVE",
    "DISABLED",
    "PENDING",
    "DeviceInfo",
    "RegisteredDevice",
    "approve",
    "authenticate",
    "disable",
    "expire",
    "find",
    "list_devices",
    "register",
    "show",
]

ID_PREFIX = "dev_"
DEFAULT_SCOPE = "agent"
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    name: str
    scope: str
    status: str
    registration_key_id: str | None
    created_at: datetime
    approved_at: datetime | None
    last_seen_at: datetime | None
    current_version: int | None
    rotation_forced: bool
    password_effective_at: datetime | None
    password_expires_at: datetime | None
    certificate_thumbprint: str | None
    directory_dn: str | None = None  # the computer object it is bound to (ams.vault.legacy)

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "status": self.status,
            "registration_key_id": self.registration_key_id,
            "created_at": iso(self.created_at),
            "approved_at": iso(self.approved_at),
            "last_seen_at": iso(self.last_seen_at),
            "current_version": self.current_version,
            "rotation_forced": self.rotation_forced,
            "password_effective_at": iso(self.password_effective_at),
            "password_expires_at": iso(self.password_expires_at),
            "certificate_thumbprint": self.certificate_thumbprint,
            "directory_dn": self.directory_dn,
        }


@dataclass(frozen=True)
class RegisteredDevice:
    device_id: str
    secret: str
    status: str

    @property
    def token(self) -> str:
        return f"{self.device_id}.{self.secret}"

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "token": self.token, "status": self.status}


def _info(device: Device, current: DevicePassword | None) -> DeviceInfo:
    return DeviceInfo(
        id=device.id,
        name=device.name,
        scope=device.scope,
        status=device.status,
        registration_key_id=device.registration_key_id,
        created_at=device.created_at,
        approved_at=device.approved_at,
        last_seen_at=device.last_seen_at,
        current_version=device.current_version,
        rotation_forced=device.force_rotation,
        password_effective_at=current.effective_at if current else None,
        password_expires_at=current.expires_at if current else None,
        certificate_thumbprint=current.certificate_thumbprint if current else None,
        directory_dn=device.directory_dn,
    )


def _with_current() -> Any:
    return select(Device, DevicePassword).outerjoin(
        DevicePassword, and_(DevicePassword.device_id == Device.id, DevicePassword.is_current.is_(True))
    )


# -- registration ---------------------------------------------------------------------------


def _refuse(
    instance: Instance, address: str | None, key_id: str, known: bool, reason: str, error: AMSError
) -> NoReturn:
    throttle.refuse(
        instance,
        throttle.AuthKind.REGISTRATION_KEY,
        address=address,
        key_id=key_id,
        event=audit.Event.DEVICE_REGISTRATION_REFUSED,
        target=key_id if known else None,
        details={"reason": reason},
        error=error,
    )


def register(
    instance: Instance,
    registration_key: str,
    name: str,
    *,
    scope: str = DEFAULT_SCOPE,
    dn: str | None = None,
    address: str | None = None,
) -> RegisteredDevice:
    """``POST /api/v1/agent/register``: a new device and its token (shown once).

    With a directory id as ``scope`` and a ``dn``, the device is bound to that existing
    entry, its computer object (ams.vault.legacy: its password is then stored there too).

    A refusal is counted against the client ``address`` and the key id; past the limit it
    answers 429 and writes nothing (ams.security.throttle).
    """
    name = check_name(name, "the device name").strip()
    if not name or len(name) > 255 or not name.isprintable():
        raise BadInput("a device needs a name of 1 to 255 printable characters (its host name)")
    check_scope(scope)
    key_id, _, secret = registration_key.strip().partition(".")
    with instance.session() as session:
        row = session.get(RegistrationKey, key_id) if key_id.startswith("rk_") and secret else None
        expected = row.secret_hash if row is not None else _DUMMY_HASH
        valid = crypto.constant_time_equal(crypto.hash_token(secret), expected) and row is not None
    if not valid:
        _refuse(instance, address, key_id, row is not None, "unknown or wrong key", RegistrationKeyInvalid())
    assert row is not None
    binding = binding_service.check_binding(instance, scope, dn)  # after the key: no probing without one
    device_id = ID_PREFIX + crypto.random_id(16)
    token_secret = crypto.random_secret(32)
    now = instance.clock.now()
    status = PENDING if row.approval_required else ACTIVE
    try:
        taken = _add_registered(
            instance, row, key_id, device_id, name, scope, binding, token_secret, status, now
        )
    except IntegrityError:
        assert binding is not None  # the only unique constraint a new device id can meet
        raise binding_service.taken(scope, binding[0]) from None
    if not taken:
        reason = "disabled" if row.disabled_at is not None else "activation limit reached"
        _refuse(
            instance,
            address,
            key_id,
            True,
            reason,
            RegistrationKeyRefused(
                f"the registration key {key_id} is {reason}: ask an administrator for another one"
            ),
        )
    return RegisteredDevice(device_id, token_secret, status)


def _add_registered(
    instance: Instance,
    key: RegistrationKey,
    key_id: str,
    device_id: str,
    name: str,
    scope: str,
    binding: tuple[str, str] | None,
    token_secret: str,
    status: str,
    now: datetime,
) -> bool:
    """Count one use of the key and add the device, in one transaction; False when the key
    is disabled or used up."""
    with instance.transaction() as session:
        # One statement checks and counts, so two registrations cannot both take the last use.
        taken = cast(
            "CursorResult[Any]",
            session.execute(
                update(RegistrationKey)
                .where(
                    RegistrationKey.id == key_id,
                    RegistrationKey.disabled_at.is_(None),
                    (RegistrationKey.activation_limit.is_(None))
                    | (RegistrationKey.used_count < RegistrationKey.activation_limit),
                )
                .values(used_count=RegistrationKey.used_count + 1)
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        if taken:
            session.add(
                Device(
                    id=device_id,
                    name=name,
                    scope=scope,
                    registration_key_id=key_id,
                    token_hash=crypto.hash_token(token_secret),
                    status=status,
                    created_at=now,
                    approved_at=now if status == ACTIVE else None,
                    force_rotation=False,
                    directory_dn=binding[0] if binding else None,
                    directory_dn_norm=binding[1] if binding else None,
                )
            )
            session.flush()
            details: dict[str, Any] = {
                "name": name,
                "registration_key": key_id,
                "status": status,
                "scope": scope,
            }
            if binding is not None:
                details["dn"] = binding[0]
            audit.record(
                session,
                instance.clock,
                audit.Event.DEVICE_REGISTERED,
                actor=f"device:{device_id}",
                target=device_id,
                details=details,
            )
    return bool(taken)


# -- device tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatedDevice:
    id: str
    name: str
    scope: str


def split_token(token: str | None) -> tuple[str, str]:
    """(device id, secret) of a bearer token ``dev_<id>.<secret>``; ("", "") when it has not
    that shape (nothing to look up)."""
    device_id, _, secret = (token or "").partition(".")
    if not device_id.startswith(ID_PREFIX) or not secret:
        return device_id, ""
    return device_id, secret


def refuse_token(instance: Instance, device_id: str, *, known: bool, address: str | None) -> NoReturn:
    """A wrong or unknown device token: counted and recorded (ams.security.throttle), then 401
    (or 429 while throttled). Call it outside any open transaction."""
    throttle.refuse(
        instance,
        throttle.AuthKind.DEVICE_TOKEN,
        address=address,
        key_id=device_id,
        event=audit.Event.DEVICE_AUTH_FAILED,
        target=device_id[:32] if known else None,
        error=DeviceTokenInvalid(),
    )


def token_matches(secret: str, token_hash: str | None) -> bool:
    """Whether the secret hashes to ``token_hash`` (compared in constant time; a dummy hash
    when the device is unknown, so both answers cost the same)."""
    valid = crypto.constant_time_equal(crypto.hash_token(secret), token_hash or _DUMMY_HASH)
    return valid and token_hash is not None


def check_status(device_id: str, status: str) -> None:
    """Only active devices use the password API."""
    if status == PENDING:
        raise DevicePendingApproval(
            f"device {device_id} waits for approval: an administrator runs `ams device approve {device_id}`"
        )
    if status == DISABLED:
        raise DeviceDisabled(f"device {device_id} is disabled: register it again, or ask an administrator")


LAST_SEEN_EVERY = timedelta(minutes=1)


def authenticate(instance: Instance, token: str | None, *, address: str | None = None) -> AuthenticatedDevice:
    """The device a bearer token ``dev_<id>.<secret>`` belongs to, if it may use the password API.

    A failure is counted against the client ``address`` and the device id; past the limit
    it answers 429 and writes nothing (ams.security.throttle). (The rotation's routes read
    the device with their own statements: ams.vault.passwords.check_in and report.)
    """
    device_id, secret = split_token(token)
    now = instance.clock.now()
    with instance.session() as session:
        row = session.get(Device, device_id) if secret else None
        if row is None or not token_matches(secret, row.token_hash):
            known = row is not None
            session.close()  # the read ends before the failure is written on its own
            refuse_token(instance, device_id, known=known, address=address)
        check_status(row.id, row.status)
        # Written at most once a minute, so check-ins do not each turn into a write.
        if row.last_seen_at is None or now - row.last_seen_at > LAST_SEEN_EVERY:
            row.last_seen_at = now
            session.commit()
        return AuthenticatedDevice(row.id, row.name, row.scope)


# -- administration -----------------------------------------------------------------------


def find(session: Session, ref: str) -> Device:
    """A device by id, or by name when exactly one device has it."""
    ref = ref.strip()
    row = session.get(Device, ref) if ref.startswith(ID_PREFIX) else None
    if row is not None:
        return row
    found = session.get(Device, named(session, ref))
    assert found is not None
    return found


_NAMED = select(Device.id).where(Device.name == bindparam("name")).order_by(Device.created_at)


def named(conn: Connection | Session, name: str) -> str:
    """The id of the one device called ``name``: NotFound for none, BadInput for several."""
    ids = [str(i) for i in conn.execute(_NAMED, {"name": name}).scalars()]
    if not ids:
        raise NotFound(f"no device {name!r}: see `ams device list`")
    if len(ids) > 1:
        listed = ", ".join(ids)
        raise BadInput(f"{len(ids)} devices are named {name!r} ({listed}): give the device id instead")
    return ids[0]


def list_devices(
    instance: Instance,
    *,
    scope: str | None = None,
    status: str | None = None,
    name_contains: str | None = None,
    limit: int | None = None,
) -> list[DeviceInfo]:
    """Devices by name; ``name_contains`` matches a part of the name or id, case-insensitive."""
    with instance.session() as session:
        query = _with_current().order_by(Device.name, Device.created_at, Device.id)
        if scope is not None:
            query = query.where(Device.scope == scope)
        if status is not None:
            query = query.where(Device.status == status)
        if name_contains:
            pattern = "%" + name_contains.lower().replace("\\", "").replace("%", "").replace("_", "\\_") + "%"
            query = query.where(
                func.lower(Device.name).like(pattern, escape="\\") | Device.id.like(pattern, escape="\\")
            )
        if limit is not None:
            query = query.limit(limit)
        return [_info(d, p) for d, p in session.execute(query)]


def show(instance: Instance, ref: str) -> DeviceInfo:
    with instance.session() as session:
        device = find(session, ref)
        current = session.scalar(
            select(DevicePassword).where(
                DevicePassword.device_id == device.id, DevicePassword.is_current.is_(True)
            )
        )
        return _info(device, current)


def approve(instance: Instance, ref: str, actor: str) -> DeviceInfo:
    with instance.transaction() as session:
        device = find(session, ref)
        if device.status == DISABLED:
            raise Conflict(f"device {device.id} is disabled; it cannot be approved")
        if device.status == PENDING:
            device.status = ACTIVE
            device.approved_at = instance.clock.now()
            audit.record(session, instance.clock, audit.Event.DEVICE_APPROVED, actor=actor, target=device.id)
    return show(instance, device.id)


def disable(instance: Instance, ref: str, actor: str) -> DeviceInfo:
    """Shut a device out (a decommissioned or compromised machine); its passwords stay readable."""
    with instance.transaction() as session:
        device = find(session, ref)
        if device.status != DISABLED:
            device.status = DISABLED
            audit.record(session, instance.clock, audit.Event.DEVICE_DISABLED, actor=actor, target=device.id)
    return show(instance, device.id)


def expire(
    instance: Instance,
    actor: str,
    *,
    device: str | None = None,
    scope: str | None = None,
    everything: bool = False,
) -> list[str]:
    """Make devices rotate at their next check-in with reason ``forced``; their ids."""
    if sum((device is not None, scope is not None, everything)) != 1:
        raise BadInput("name exactly one of: a DEVICE, --scope SCOPE, or --all")
    now = instance.clock.now()
    with instance.transaction() as session:
        if device is not None:
            rows = [find(session, device)]
        else:
            query = select(Device).where(Device.status != DISABLED).order_by(Device.id)
            if scope is not None:
                query = query.where(Device.scope == check_scope(scope))
            rows = list(session.scalars(query))
        for row in rows:
            row.force_rotation = True
            row.forced_at = now
            audit.record(
                session, instance.clock, audit.Event.DEVICE_ROTATION_FORCED, actor=actor, target=row.id
            )
        ids = [r.id for r in rows]
    binding_service.publish_forced(instance, ids, actor)  # expiration time 0 on bound devices' objects
    return ids
