"""Registration keys: ``rk_<16 hex>.<secret>``, presented once by an agent to register a device.

The secret is shown once, at creation; the database keeps only its SHA-256. A key may limit
how many devices it registers in all, and may require an administrator's approval of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.db.models.vault import RegistrationKey
from ams.errors import AlreadyExists, BadInput, NotFound
from ams.instance import Instance
from ams.textcheck import check_name

__all__ = ["CreatedRegistrationKey", "RegistrationKeyInfo", "create", "disable", "find", "list_keys"]

ID_PREFIX = "rk_"


@dataclass(frozen=True)
class RegistrationKeyInfo:
    id: str
    name: str
    activation_limit: int | None
    used_count: int
    approval_required: bool
    disabled_at: datetime | None
    created_at: datetime

    @property
    def state(self) -> str:
        if self.disabled_at is not None:
            return "disabled"
        if self.activation_limit is not None and self.used_count >= self.activation_limit:
            return "used up"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "activation_limit": self.activation_limit,
            "used_count": self.used_count,
            "approval_required": self.approval_required,
            "state": self.state,
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class CreatedRegistrationKey:
    info: RegistrationKeyInfo
    secret: str

    @property
    def key(self) -> str:
        """What the agent is given: ``ams-agent register --registration-key KEY``."""
        return f"{self.info.id}.{self.secret}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "secret": self.secret, "key": self.key}


def info_of(row: RegistrationKey) -> RegistrationKeyInfo:
    return RegistrationKeyInfo(
        row.id,
        row.name,
        row.activation_limit,
        row.used_count,
        row.approval_required,
        row.disabled_at,
        row.created_at,
    )


def create(
    instance: Instance, name: str, actor: str, *, limit: int | None = None, approval: bool = False
) -> CreatedRegistrationKey:
    name = check_name(name, "the registration key name").strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise BadInput("a registration key needs a name of 1 to 128 printable characters")
    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1 (leave it out for no limit)")
    key_id = ID_PREFIX + crypto.random_id(16)
    secret = crypto.random_secret(32)
    row = RegistrationKey(
        id=key_id,
        name=name,
        secret_hash=crypto.hash_token(secret),
        activation_limit=limit,
        used_count=0,
        approval_required=approval,
        created_at=instance.clock.now(),
    )
    try:
        with instance.transaction() as session:
            if session.scalar(select(RegistrationKey.id).where(RegistrationKey.name == name)):
                raise AlreadyExists(f"a registration key named {name!r} exists: choose another name")
            session.add(row)
            audit.record(
                session,
                instance.clock,
                audit.Event.REGISTRATION_KEY_CREATED,
                actor=actor,
                target=key_id,
                details={"name": name, "limit": limit, "approval": approval},
            )
    except IntegrityError:  # a concurrent create with the same name
        raise AlreadyExists(f"a registration key named {name!r} exists: choose another name") from None
    return CreatedRegistrationKey(info_of(row), secret)


def list_keys(instance: Instance) -> list[RegistrationKeyInfo]:
    with instance.session() as session:
        rows = session.scalars(
            select(RegistrationKey).order_by(RegistrationKey.created_at, RegistrationKey.id)
        )
        return [info_of(r) for r in rows]


def find(session: Session, ref: str) -> RegistrationKey:
    """A key by id or by name."""
    row = session.get(RegistrationKey, ref) if ref.startswith(ID_PREFIX) else None
    if row is None:
        row = session.scalar(select(RegistrationKey).where(RegistrationKey.name == ref))
    if row is None:
        raise NotFound(f"no registration key {ref!r}: see `ams regkey list`")
    return row


def disable(instance: Instance, ref: str, actor: str) -> RegistrationKeyInfo:
    """Refuse further registrations with the key; devices it registered keep working."""
    with instance.transaction() as session:
        row = find(session, ref)
        if row.disabled_at is None:
            row.disabled_at = instance.clock.now()
            audit.record(
                session, instance.clock, audit.Event.REGISTRATION_KEY_DISABLED, actor=actor, target=row.id
            )
        return info_of(row)
