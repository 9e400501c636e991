"""Devices bound to a directory's computer object: the binding's checks, and forced
rotations made visible on the object (expiration time 0, as Windows LAPS writes it).

The part of ams.vault.legacy that the devices and certificates services call: it imports
neither of them (nor ams.vault.passwords), so each module's dependencies run one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ams import audit
from ams.clock import Clock
from ams.db.models.vault import DISABLED, Device
from ams.directory import dn as dnlib
from ams.directory import objects
from ams.errors import AMSError, DirectoryBindingInvalid, DirectoryEntryNotFound, DirectoryNotFound
from ams.instance import Instance
from ams.laps import EXPIRATION_TIME

__all__ = ["check_binding", "force", "force_scope", "is_directory_scope", "publish_forced", "taken"]


def is_directory_scope(scope: str) -> bool:
    return scope.startswith("d-")


def check_binding(instance: Instance, scope: str, dn: str | None) -> tuple[str, str] | None:
    """The entry's DN as the directory holds it and its normalised form, for a device of
    ``scope`` bound to ``dn``; None when there is no DN to bind.

    The entry must exist (an administrator creates the computer object first, as a domain
    join needs a computer account): registering never writes into a directory. One device
    per entry is enforced by the database (a partial unique index) when the device is added.
    """
    if dn is None or not dn.strip():
        return None
    if not is_directory_scope(scope):
        raise DirectoryBindingInvalid(
            f"a DN binds a device to a directory's entry, but the scope is {scope!r}: give "
            "the directory id as the scope (--directory d-…), or no DN"
        )
    try:
        entry = objects.get(instance, scope, dn)
    except DirectoryNotFound:
        raise DirectoryBindingInvalid(
            f"there is no directory {scope}: see `ams directory list`; nothing was registered"
        ) from None
    except DirectoryEntryNotFound:
        raise DirectoryBindingInvalid(
            f"directory {scope} has no entry {dn!r}: create the computer object first "
            "(LDAP, LDIF or REST), then register the device; nothing was registered"
        ) from None
    return entry.dn, dnlib.normalise(entry.dn)


def taken(scope: str, dn: str) -> DirectoryBindingInvalid:
    return DirectoryBindingInvalid(
        f"another device is bound to {dn!r} in directory {scope}: disable it first "
        "(`ams device disable`), or choose another DN; nothing was registered"
    )


def force(session: Session, clock: Clock, row: Device, actor: str, details: dict[str, Any]) -> None:
    row.force_rotation = True
    row.forced_at = clock.now()
    audit.record(
        session, clock, audit.Event.DEVICE_ROTATION_FORCED, actor=actor, target=row.id, details=details
    )


def force_scope(session: Session, clock: Clock, scope: str, actor: str, reason: str) -> list[str]:
    """Force every device of a directory scope (not disabled) to rotate; their ids. Runs in
    the caller's transaction (``certificates.lost``); :func:`publish_forced` afterwards."""
    if not is_directory_scope(scope):
        return []
    rows = session.scalars(
        select(Device).where(Device.scope == scope, Device.status != DISABLED).order_by(Device.id)
    ).all()
    for row in rows:
        force(session, clock, row, actor, {"reason": reason})
    return [r.id for r in rows]


def publish_forced(instance: Instance, device_ids: Iterable[str], actor: str) -> list[str]:
    """Write expiration time 0 on the objects of those devices that are bound, so a legacy
    agent reading its object rotates; the ids written.

    A directory being restored is skipped: the restore, when it completes, writes 0 on the
    object of every device whose rotation is still forced (ams.vault.legacy.detect_restored_rollbacks).
    An object deleted since the device was bound is skipped too (the vault still forces it).
    """
    ids = set(device_ids)
    if not ids:
        return []
    with instance.session() as session:
        # The bound devices are few; the ids may be every device (``ams device expire --all``).
        bound = session.execute(
            select(Device.id, Device.scope, Device.directory_dn).where(Device.directory_dn.is_not(None))
        ).all()
    written = []
    for device_id, scope, dn in bound:
        if device_id not in ids or dn is None:
            continue
        try:
            objects.modify(instance, scope, dn, replace={EXPIRATION_TIME: ["0"]}, actor=actor)
        except AMSError:
            continue
        written.append(device_id)
    return written
