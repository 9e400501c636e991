"""API keys: ``<id>.<secret>`` bearer credentials with a role (admin or reader).

The secret is shown once, at creation. The database keeps its SHA-256 (to authenticate
bearer requests even while the master key is locked) and the secret sealed in the secret
box (AWS-style request signing needs the secret itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection

from ams import audit, crypto
from ams.db.models import ApiKey
from ams.errors import AuthenticationRequired, BadInput, NotFound, PermissionDenied
from ams.instance import Instance
from ams.security import throttle
from ams.textcheck import check_name

__all__ = ["ApiKeyInfo", "CreatedKey", "Role", "authenticate", "create", "list_keys", "revoke"]

_PURPOSE = "api-key-secret"
_ID_PREFIX = "ak_"


class Role(StrEnum):
    ADMIN = "admin"
    READER = "reader"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.READER


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": str(self.role),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class CreatedKey:
    info: ApiKeyInfo
    secret: str

    @property
    def token(self) -> str:
        return f"{self.info.id}.{self.secret}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "secret": self.secret, "token": self.token}


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.name, Role(row.role), row.created_at, row.revoked_at, row.last_used_at)


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise BadInput(f"unknown role {value!r}: use admin or reader") from None


def create(instance: Instance, name: str, role: Role, actor: str) -> CreatedKey:
    name = check_name(name, "the API key name").strip()
    if not name or len(name) > 128:
        raise BadInput("an API key needs a name of 1 to 128 characters")
    box = instance.keyring.box  # raises MasterKeyLocked before anything is written
    key_id = _ID_PREFIX + crypto.random_id(16)
    secret = crypto.random_secret(32)
    now = instance.clock.now()
    row = ApiKey(
        id=key_id,
        name=name,
        role=str(role),
        secret_hash=crypto.hash_token(secret),
        secret_sealed=box.seal(_PURPOSE, f"apikey:{key_id}", secret.encode()),
        created_at=now,
    )
    with instance.transaction() as session:
        session.add(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.API_KEY_CREATED,
            actor=actor,
            target=key_id,
            details={"name": name, "role": str(role)},
        )
    return CreatedKey(_info(row), secret)


def list_keys(instance: Instance, *, include_revoked: bool = False) -> list[ApiKeyInfo]:
    with instance.session() as session:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return [_info(r) for r in session.scalars(query)]


def revoke(instance: Instance, key_id: str, actor: str) -> ApiKeyInfo:
    with instance.transaction() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key {key_id!r}: see `ams apikey list`")
        if row.revoked_at is None:
            row.revoked_at = instance.clock.now()
            audit.record(session, instance.clock, audit.Event.API_KEY_REVOKED, actor=actor, target=key_id)
        return _info(row)


def secret_of(instance: Instance, key_id: str) -> str:
    """The secret of an active key (for signature checks). Needs the master key."""
    with instance.session() as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            raise AuthenticationRequired("unknown or revoked API key")
        sealed = row.secret_sealed
    return instance.keyring.box.open(_PURPOSE, f"apikey:{key_id}", sealed).decode()


_KEYS = cast(Table, ApiKey.__table__)
_KEY = select(
    _KEYS.c.id,
    _KEYS.c.name,
    _KEYS.c.role,
    _KEYS.c.secret_hash,
    _KEYS.c.created_at,
    _KEYS.c.revoked_at,
    _KEYS.c.last_used_at,
).where(_KEYS.c.id == bindparam("key_id"))
_USED = update(_KEYS).where(_KEYS.c.id == bindparam("key_id")).values(last_used_at=bindparam("now"))


def authenticate(
    instance: Instance,
    token: str | None,
    needed: Role,
    *,
    address: str | None = None,
    conn: Connection | None = None,
) -> ApiKeyInfo:
    """Check a bearer token ``<id>.<secret>`` and the role it needs.

    Every call reads the key's row, so a key revoked by any process is refused at once. On
    ``conn`` (the caller's connection, which this commits) the check costs one statement
    of the caller's request (:func:`ams.vault.passwords.read`); else on a connection of its
    own. A failure is counted against the client ``address`` and the key id; past the limit
    it answers 429 and writes nothing (ams.security.throttle).
    """
    if not token:
        raise AuthenticationRequired()
    if conn is None:
        with instance.engine.connect() as own:
            return authenticate(instance, token, needed, address=address, conn=own)
    key_id, _, secret = token.partition(".")
    row = conn.execute(_KEY, {"key_id": key_id}).first() if key_id.startswith(_ID_PREFIX) and secret else None
    # Compare against a dummy hash when the key is unknown, so timing tells nothing.
    expected = row.secret_hash if row is not None else "0" * 64
    valid = crypto.constant_time_equal(crypto.hash_token(secret), expected)
    info: ApiKeyInfo | None = None
    if row is not None and valid and row.revoked_at is None:
        info = ApiKeyInfo(row.id, row.name, Role(row.role), row.created_at, row.revoked_at, row.last_used_at)
        now = instance.clock.now()
        # Written at most once a minute, so reads do not turn into a write each.
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            conn.execute(_USED, {"key_id": key_id, "now": now})
    conn.commit()
    if info is None:
        throttle.refuse(
            instance,
            throttle.AuthKind.API_KEY,
            address=address,
            key_id=key_id,
            event=audit.Event.API_AUTH_FAILED,
            target=key_id[:32] if row is not None else None,
            error=AuthenticationRequired("invalid or revoked API key"),
        )
    if not info.role.allows(needed):
        raise PermissionDenied(f"this API key has the {info.role} role; this call needs {needed}")
    return info
