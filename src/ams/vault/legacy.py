"""Directory-stored passwords: devices bound to a computer object of a hosted directory.

A device whose scope is a directory id (``d-…``) may be *bound* to one entry of that
directory, its computer object (``devices.directory_dn``). Such a device (a "legacy" agent,
``ams-agent run --mode directory``) keeps its password where Windows LAPS keeps it, on its
own object, in two attributes:

- ``msLAPS-EncryptedPassword``: the AMS password blob (docs/formats.md), encrypted to the
  directory's active certificate;
- ``msLAPS-PasswordExpirationTime``: when it must rotate, a Windows FILETIME (100 ns since
  1601-01-01 UTC) as decimal text; ``0`` means "rotate now", as Windows LAPS writes it.

The vault stays the record: a blob written on the object is test-decrypted and stored in
the device's history exactly as an agent's report is (:func:`ams.vault.passwords.store_blob`),
so ``ams password get``, REST and the console read it through ``passwords.read`` like any
other. What this module adds:

- the LDAP server's hooks for devices (``ams.ldapserver.access`` imports them lazily):
  :func:`authenticate_bind`, :func:`visible_attributes`, :func:`device_modify`;
- binding at registration (:func:`check_binding`, :func:`register_bound`);
- forced rotations made visible on the object (:func:`publish_forced`), for ``ams device
  expire``, a lost certificate of the directory (:func:`force_scope`) and a directory
  restore that moved passwords back in time (:func:`detect_restored_rollbacks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.clock import Clock
from ams.db.models.directory import DirectoryObject
from ams.db.models.vault import Device, DevicePassword
from ams.directory import directories, objects
from ams.directory import dn as dnlib
from ams.directory.entry import Entry, Value, decode_values, encode_values
from ams.errors import (
    AMSError,
    BadInput,
    DeviceWriteNotAllowed,
)
from ams.instance import Instance
from ams.laps import ENCRYPTED_PASSWORD, EXPIRATION_TIME, MAX_FILETIME, from_filetime, to_filetime
from ams.textcheck import check_name
from ams.vault import devices as devices_service
from ams.vault import passwords
from ams.vault.binding import (
    check_binding,
    force,
    force_scope,
    is_directory_scope,
    publish_forced,
    taken,
)
from ams.vault.devices import AuthenticatedDevice, RegisteredDevice

__all__ = [
    "ENCRYPTED_PASSWORD",
    "EXPIRATION_TIME",
    "BoundDevice",
    "RolledBack",
    "authenticate_bind",
    "check_binding",
    "detect_restored_rollbacks",
    "device_modify",
    "force_scope",
    "from_filetime",
    "is_directory_scope",
    "publish_forced",
    "register_bound",
    "taken",
    "to_filetime",
    "visible_attributes",
]

_PASSWORD_ATTRIBUTES = {
    ENCRYPTED_PASSWORD.lower(): ENCRYPTED_PASSWORD,
    EXPIRATION_TIME.lower(): EXPIRATION_TIME,
}
_HIDDEN_PREFIX = "mslaps-"  # of any other entry, a device sees none of these
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True)
class BoundDevice(AuthenticatedDevice):
    """A device authenticated by an LDAP bind as its own computer object."""

    directory_id: str = ""
    dn_norm: str = ""

    @property
    def device_id(self) -> str:
        return self.id


# -- binding (the checks are in ams.vault.binding) ------------------------------------------------


def register_bound(instance: Instance, name: str, directory_id: str, dn: str, actor: str) -> RegisteredDevice:
    """``ams device register``: an administrator makes a device bound to a computer object
    (no registration key); its token is returned once, for the legacy agent's state."""
    name = check_name(name, "the device name").strip()
    if not name or len(name) > 255 or not name.isprintable():
        raise BadInput("a device needs a name of 1 to 255 printable characters (its host name)")
    directories.check_directory_id(directory_id)
    binding = check_binding(instance, directory_id, dn)
    assert binding is not None
    device_id = devices_service.ID_PREFIX + crypto.random_id(16)
    secret = crypto.random_secret(32)
    now = instance.clock.now()
    try:
        with instance.transaction() as session:
            session.add(
                Device(
                    id=device_id,
                    name=name,
                    scope=directory_id,
                    registration_key_id=None,
                    token_hash=crypto.hash_token(secret),
                    status=devices_service.ACTIVE,
                    created_at=now,
                    approved_at=now,
                    force_rotation=False,
                    directory_dn=binding[0],
                    directory_dn_norm=binding[1],
                )
            )
            session.flush()
            audit.record(
                session,
                instance.clock,
                audit.Event.DEVICE_REGISTERED,
                actor=actor,
                target=device_id,
                details={
                    "name": name,
                    "registration_key": None,
                    "status": devices_service.ACTIVE,
                    "scope": directory_id,
                    "dn": binding[0],
                },
            )
    except IntegrityError:
        raise taken(directory_id, binding[0]) from None
    return RegisteredDevice(device_id, secret, devices_service.ACTIVE)


# -- the LDAP server's hooks -------------------------------------------------------------------


def authenticate_bind(
    instance: Instance, directory_id: str, bind_dn: str, password: str
) -> BoundDevice | None:
    """The device a simple bind opens: ``bind_dn`` is its computer object's DN in
    ``directory_id``, ``password`` its device token (``dev_<id>.<secret>``).

    None when the credentials open no device: a DN no device is bound to, a wrong token, a
    token of another device, a pending or disabled device. The LDAP server answers
    invalidCredentials and counts the failure with ams.security.throttle per address, as the
    agent API counts a wrong device token (ams.ldapserver.access.authenticate); counting it
    here too would count it twice. The token is compared in constant time, against a dummy
    hash when the DN is no device's, so the answer's timing tells nothing.
    """
    try:
        norm = dnlib.normalise(bind_dn)
    except BadInput:
        return None
    token_id, _, secret = (password or "").partition(".")
    now = instance.clock.now()
    with instance.session() as session:
        row = session.scalars(
            select(Device).where(
                Device.scope == directory_id,
                Device.directory_dn_norm == norm,
                Device.status != devices_service.DISABLED,
            )
        ).first()
        expected = row.token_hash if row is not None else _DUMMY_HASH
        valid = crypto.constant_time_equal(crypto.hash_token(secret), expected)
        if row is None or not valid or not secret or not crypto.constant_time_equal(token_id, row.id):
            return None
        if row.status != devices_service.ACTIVE:
            return None  # pending approval
        # Written at most once a minute, as the agent API's authentication does.
        if row.last_seen_at is None or now - row.last_seen_at > timedelta(minutes=1):
            row.last_seen_at = now
            session.commit()
        return BoundDevice(row.id, row.name, row.scope, directory_id=directory_id, dn_norm=norm)


def _bound_norm(instance: Instance, device: AuthenticatedDevice) -> str | None:
    if isinstance(device, BoundDevice):
        return device.dn_norm
    with instance.session() as session:
        return session.scalar(select(Device.directory_dn_norm).where(Device.id == device.id))


def visible_attributes(instance: Instance, device: AuthenticatedDevice, entry: Entry) -> set[str]:
    """The attributes of ``entry`` a device bound over LDAP may read: all of its own object's;
    of any other entry, all but the ``msLAPS-*`` ones (other devices' passwords)."""
    names = {"objectClass", *entry.attributes}
    try:
        own = dnlib.normalise(entry.dn) == _bound_norm(instance, device)
    except BadInput:
        own = False
    if own:
        return names
    return {n for n in names if not n.lower().startswith(_HIDDEN_PREFIX)}


class Change(Protocol):
    """One change of an LDAP modify, as ams.ldapserver.access.Change carries it."""

    @property
    def op(self) -> str: ...
    @property
    def attribute(self) -> str: ...
    @property
    def values(self) -> list[Value]: ...


Changes = Mapping[str, Mapping[str, Sequence[Value]]] | Iterable[Change | tuple[str, str, Sequence[Value]]]


def _operations(changes: Changes) -> list[tuple[str, str, list[Value]]]:
    """``changes`` as (operation, attribute, values), from LDAP's sequence of changes
    (``Change`` objects or triples), or ``{"replace"|"add"|"delete": {attribute: values}}``
    (ams.directory.objects.modify's shape)."""
    if isinstance(changes, Mapping):
        return [(op, name, list(values)) for op, group in changes.items() for name, values in group.items()]
    out: list[tuple[str, str, list[Value]]] = []
    for change in changes:
        if isinstance(change, tuple):
            op, name, values = change
            out.append((op, name, list(values)))
        else:
            out.append((change.op, change.attribute, list(change.values)))
    return out


def _refuse_write(
    instance: Instance,
    device: AuthenticatedDevice,
    directory_id: str,
    dn: str,
    attributes: list[str],
    why: str,
) -> DeviceWriteNotAllowed:
    with instance.transaction() as session:
        audit.record(
            session,
            instance.clock,
            audit.Event.DEVICE_DIRECTORY_WRITE_REFUSED,
            actor=f"device:{device.id}",
            target=directory_id,
            outcome="failure",
            details={"dn": dn[:512], "attributes": attributes[:20]},
        )
    return DeviceWriteNotAllowed(
        f"device {device.id} may write only {ENCRYPTED_PASSWORD} and {EXPIRATION_TIME} of its own "
        f"object: {why}; nothing was changed"
    )


def _one_value(name: str, values: list[Value]) -> Value:
    if len(values) != 1:
        raise BadInput(f"{name} takes exactly one value; nothing was changed")
    return values[0]


def _filetime(value: Value) -> int:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if not text.isdigit() or int(text) > MAX_FILETIME:
        raise BadInput(
            f"{EXPIRATION_TIME} must be a Windows FILETIME (a whole number, 0 for rotate now); "
            "nothing was changed"
        )
    return int(text)


def device_modify(
    instance: Instance, device: AuthenticatedDevice, directory_id: str, dn: str, changes: Changes
) -> None:
    """An LDAP modify by a device: only ``msLAPS-EncryptedPassword`` and
    ``msLAPS-PasswordExpirationTime`` of its own object (add or replace, one value each).

    A blob is test-decrypted and stored in the vault first (its history, retention, event
    1407, exactly as an agent's report: :func:`ams.vault.passwords.store_blob`), then written
    on the object with the vault's expiry (the policy's maximum age decides it, not the
    device), through :func:`ams.directory.objects.modify`. If that write fails, the vault's
    update is undone, so the vault and the object never disagree about what is current.

    Raises :class:`DeviceWriteNotAllowed` (LDAP: insufficientAccessRights, event 1415) for
    anything else, :class:`BadInput` for a malformed value, and what ``store_blob`` raises
    (:class:`~ams.errors.PasswordUndecryptable` for a blob it cannot open).
    """
    ops = _operations(changes)
    names = [name for _, name, _ in ops]
    norm: str | None
    try:
        norm = dnlib.normalise(dn)
    except BadInput:
        norm = None
    bound = _bound_norm(instance, device)
    if device.scope != directory_id or bound is None or norm != bound:
        raise _refuse_write(instance, device, directory_id, dn, names, "this is not its object")
    others = sorted({n for n in names if n.lower() not in _PASSWORD_ATTRIBUTES})
    if others:
        raise _refuse_write(instance, device, directory_id, dn, names, f"{', '.join(others)} is not allowed")
    blob: bytes | None = None
    expiry: int | None = None
    for op, name, values in ops:
        canonical = _PASSWORD_ATTRIBUTES[name.lower()]
        if op not in ("add", "replace"):
            raise _refuse_write(
                instance, device, directory_id, dn, names, f"{canonical} can be replaced, not deleted"
            )
        value = _one_value(canonical, values)
        if canonical == ENCRYPTED_PASSWORD:
            blob = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        else:
            expiry = _filetime(value)
    if blob is None and expiry is None:
        return
    with instance.session() as session:  # a directory being restored refuses before the vault changes
        directories.refuse_while_restoring(directories.load(session, directory_id))
    actor = f"device:{device.id}"
    if blob is None:
        assert expiry is not None
        objects.modify(instance, directory_id, dn, replace={EXPIRATION_TIME: [str(expiry)]}, actor=actor)
        return
    stored = passwords.store_blob(instance, device, blob)
    try:
        objects.modify(
            instance,
            directory_id,
            dn,
            replace={ENCRYPTED_PASSWORD: [blob], EXPIRATION_TIME: [str(to_filetime(stored.expires_at))]},
            actor=actor,
        )
    except AMSError:
        passwords.undo(instance, device, stored.request_id)
        raise


# -- after a directory restore -----------------------------------------------------------------


@dataclass(frozen=True)
class RolledBack:
    device_id: str
    dn: str
    restored_version: int | None  # the version of the blob the object now holds, when known
    current_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "dn": self.dn,
            "restored_version": self.restored_version,
            "current_version": self.current_version,
        }


def _blob_of(attributes: dict[str, list[Value]]) -> bytes | None:
    for name, values in attributes.items():
        if name.lower() == ENCRYPTED_PASSWORD.lower() and values:
            value = values[0]
            return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return None


def detect_restored_rollbacks(
    session: Session, clock: Clock, directory_id: str, generation: int, *, actor: str, snapshot_id: str
) -> list[RolledBack]:
    """After a directory restore (in the restore's switch transaction, ams.directory.restore):
    every bound device whose object now holds a blob other than the vault's current one (an
    older password, or none) is forced to rotate, and every bound device whose rotation is
    forced gets expiration time 0 written on its restored object.

    The comparison is of the stored bytes with the vault's history, so it needs no private
    key and works while the master key is locked. Objects are written in the rows of
    ``generation`` directly: the directory is still Restoring in this transaction, and the
    write is part of the restore (replicas share the generation's rows).
    """
    devices = session.scalars(
        select(Device)
        .where(
            Device.scope == directory_id,
            Device.directory_dn_norm.is_not(None),
            Device.status != devices_service.DISABLED,
        )
        .order_by(Device.id)
    ).all()
    found: list[RolledBack] = []
    for device in devices:
        obj = session.scalars(
            select(DirectoryObject).where(
                DirectoryObject.directory_id == directory_id,
                DirectoryObject.generation == generation,
                DirectoryObject.dn_norm == device.directory_dn_norm,
            )
        ).one_or_none()
        attributes = decode_values(obj.attributes) if obj is not None else {}
        blob = _blob_of(attributes)
        history = {
            bytes(b): v
            for b, v in session.execute(
                select(DevicePassword.blob, DevicePassword.version).where(
                    DevicePassword.device_id == device.id
                )
            )
        }
        current = session.scalar(
            select(DevicePassword.blob).where(
                DevicePassword.device_id == device.id, DevicePassword.is_current.is_(True)
            )
        )
        rolled_back = (blob or None) != (bytes(current) if current is not None else None)
        if rolled_back:
            item = RolledBack(
                device.id,
                device.directory_dn or "",
                history.get(blob) if blob is not None else None,
                device.current_version,
            )
            found.append(item)
            force(session, clock, device, actor, {"reason": "directory_restore", "snapshot": snapshot_id})
            audit.record(
                session,
                clock,
                audit.Event.DIRECTORY_PASSWORDS_ROLLED_BACK,
                actor=actor,
                target=device.id,
                details={"directory": directory_id, "snapshot": snapshot_id, **item.to_dict()},
            )
        if obj is not None and device.force_rotation:
            # Not an attribute of ams.directory.valueindex.INDEXED: no index row to keep.
            kept = {k: v for k, v in attributes.items() if k.lower() != EXPIRATION_TIME.lower()}
            kept[EXPIRATION_TIME] = ["0"]
            obj.attributes = encode_values(kept)
    return found
