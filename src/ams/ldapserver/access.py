"""Who is bound on an LDAP connection, and what that principal may read and write.

The LDAP server (:mod:`ams.ldapserver.server`) calls these hooks for every operation; it
decides nothing about access itself.

Principals (:class:`Principal`, frozen):

- ``anonymous``: no bind, or a bind with an empty name. May read the rootDSE only.
- ``admin``: a simple bind as ``Admin@DNSNAME`` (the UPN form, without regard to case) or
  as the admin entry's DN ``CN=Admin,CN=Users,DC=...`` with the directory's admin
  password (:func:`ams.directory.directories.verify_admin_password`). Reads and writes
  everything of that one directory.
- ``device``: a simple bind by a device bound to a computer object of the directory. Only
  when :mod:`ams.vault.legacy` exists (the legacy-agent mode); without it no device binds.

The interface to :mod:`ams.vault.legacy` (imported lazily; a missing module means "no
device binds"):

- ``authenticate_bind(instance, directory_id, bind_dn, password) -> AuthenticatedDevice |
  None``: the device that ``bind_dn``/``password`` authenticate in that directory, or None
  (the server answers invalidCredentials and counts the failure). ``AuthenticatedDevice``
  has at least ``device_id: str``.
- ``visible_attributes(instance, device, entry) -> set[str]``: the attribute names (any
  case) the device may read of ``entry`` (an :class:`ams.directory.entry.Entry`); an entry
  with none visible is not returned at all.
- ``device_modify(instance, device, directory_id, dn, changes) -> None``: performs the
  device's modify itself (test-decrypts, writes through ``ams.directory.objects``); raises
  ``PermissionDenied`` (answered insufficientAccessRights 50), ``BadInput`` (constraint
  violation 19) or ``PasswordUndecryptable`` (constraint violation 19, with its message).
  ``changes`` is a list of :class:`Change`.

Every other write by a device (add, delete, modifyDN) is refused here with
insufficientAccessRights.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from ams.errors import PermissionDenied

if TYPE_CHECKING:
    from ams.directory.entry import Entry, Value
    from ams.instance import Instance

__all__ = [
    "ANONYMOUS",
    "Change",
    "DirectoryRef",
    "Principal",
    "authenticate",
    "check_read",
    "check_write",
    "device_modify",
    "legacy",
    "may_read",
    "served_directories",
]

Kind = Literal["anonymous", "admin", "device"]
ANONYMOUS_MESSAGE = "anonymous binds may read the rootDSE only: bind as Admin@DNSNAME first"


@dataclass(frozen=True)
class Change:
    """One modification of an LDAP modify: ``op`` add, delete or replace."""

    op: Literal["add", "delete", "replace"]
    attribute: str
    values: list[Value]


@dataclass(frozen=True)
class Principal:
    kind: Kind
    directory_id: str | None = None
    device_id: str | None = None
    bind_dn: str = ""
    # What ams.vault.legacy.authenticate_bind returned, handed back to its other hooks.
    device: Any = field(default=None, compare=False, repr=False)


ANONYMOUS = Principal("anonymous")


def legacy() -> ModuleType | None:
    """``ams.vault.legacy`` when this installation has it (the legacy-agent mode)."""
    try:
        return importlib.import_module("ams.vault.legacy")
    except ModuleNotFoundError as exc:
        if exc.name not in ("ams.vault.legacy",):
            raise
        return None


@dataclass(frozen=True)
class DirectoryRef:
    """What the server needs to route a DN to its directory."""

    id: str
    dns_name: str
    suffix: str  # DC=corp,DC=example,DC=com
    suffix_norm: str  # dc=corp,dc=example,dc=com
    stage: str


def served_directories(instance: Instance) -> list[DirectoryRef]:
    """Every directory whose entries AMS holds (MicrosoftAD), whatever its stage."""
    from sqlalchemy import select

    from ams.db.models.directory import Directory
    from ams.directory import directories
    from ams.directory import dn as dnlib

    with instance.session() as session:
        rows = session.execute(
            select(Directory.id, Directory.dns_name, Directory.stage)
            .where(Directory.type == "MicrosoftAD")
            .order_by(Directory.created_at, Directory.id)
        ).all()
    out = []
    for directory_id, dns_name, stage in rows:
        suffix = directories.suffix(dns_name)
        out.append(DirectoryRef(directory_id, dns_name, suffix, dnlib.normalise(suffix), stage))
    return out


def _admin_of(name: str, served: list[DirectoryRef]) -> DirectoryRef | None:
    """The directory whose admin ``name`` names: ``Admin@DNSNAME`` or ``CN=Admin,CN=Users,<suffix>``."""
    from ams.directory import dn as dnlib
    from ams.errors import BadInput

    if "@" in name and "=" not in name:
        user, _, domain = name.rpartition("@")
        if user.lower() != "admin":
            return None
        return next((d for d in served if d.dns_name.lower() == domain.lower()), None)
    try:
        norm = dnlib.normalise(name)
    except BadInput:
        return None
    return next((d for d in served if norm == "cn=admin,cn=users," + d.suffix_norm), None)


def authenticate(
    instance: Instance, served: list[DirectoryRef], name: str, password: str, address: str | None
) -> Principal:
    """The principal that a simple bind with ``name``/``password`` makes, or
    :class:`~ams.errors.AuthenticationRequired` (invalidCredentials), counted by the
    failed-authentication throttle per address (TooManyRequests past its limit)."""
    from ams import audit
    from ams.directory import directories
    from ams.directory import dn as dnlib
    from ams.errors import AuthenticationRequired, BadInput
    from ams.security import throttle

    admin = _admin_of(name, served)
    if admin is not None or legacy() is None:
        if directories.verify_admin_password(instance, admin.id if admin else None, password):
            assert admin is not None
            return Principal("admin", admin.id, None, directories.admin_dn(admin.dns_name))
        target = admin.id if admin else None
    else:
        target = None
        try:
            norm = dnlib.normalise(name)
        except BadInput:
            norm = ""
        owner = max(
            (d for d in served if norm == d.suffix_norm or norm.endswith("," + d.suffix_norm)),
            key=lambda d: len(d.suffix_norm),
            default=None,
        )
        module = legacy()
        if owner is not None and module is not None:
            target = owner.id
            device = module.authenticate_bind(instance, owner.id, name, password)
            if device is not None:
                return Principal("device", owner.id, str(device.device_id), name, device)
    throttle.refuse(
        instance,
        throttle.AuthKind.LDAP_BIND,
        address=address,
        key_id=None,
        event=audit.Event.LDAP_BIND_FAILED,
        target=target,
        details={"bind_name": name[:256]},
        error=AuthenticationRequired("invalid credentials"),
        actor="ldap",
    )


def _same_directory(principal: Principal, directory_id: str) -> None:
    if principal.kind == "anonymous":
        raise PermissionDenied(ANONYMOUS_MESSAGE)
    if principal.directory_id != directory_id:
        raise PermissionDenied(
            f"bound to directory {principal.directory_id}: this DN is in another directory; "
            "bind as that directory's admin"
        )


def may_read(instance: Instance, principal: Principal, directory_id: str, entry: Entry) -> set[str] | None:
    """The attribute names ``principal`` may read of ``entry``: None for all, an empty set
    when the entry is not visible at all."""
    _same_directory(principal, directory_id)
    if principal.kind == "admin":
        return None
    module = legacy()
    if module is None:
        return set()
    return {name.lower() for name in module.visible_attributes(instance, principal.device, entry)}


def check_read(principal: Principal, directory_id: str) -> None:
    """Refuse a search of ``directory_id`` by a principal that may read nothing there."""
    _same_directory(principal, directory_id)


def check_write(principal: Principal, directory_id: str, dn: str, changes: list[Change] | None) -> None:
    """Refuse a write the principal may not make. ``changes`` is None for add, delete and
    modifyDN. A device's modify is allowed here and checked by :func:`device_modify`."""
    _same_directory(principal, directory_id)
    if principal.kind == "admin":
        return
    if changes is None or legacy() is None:
        raise PermissionDenied(f"{principal.bind_dn} may not change {dn}: only its own password attributes")


def device_modify(
    instance: Instance, principal: Principal, directory_id: str, dn: str, changes: list[Change]
) -> None:
    module = legacy()
    if module is None:
        raise PermissionDenied("device binds are not available on this installation")
    module.device_modify(instance, principal.device, directory_id, dn, changes)
