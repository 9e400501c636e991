"""Local users of the web console, and their sessions.

A user has a name, a role (admin or reader, the same roles as API keys) and an Argon2id
password hash. Logging in creates a session: the browser's cookie holds a random token
(256 bits), the database only its SHA-256, so a copy of the database or of a backup opens
no session. A session ends at logout, after :data:`IDLE` without a request, after
:data:`ABSOLUTE` in any case, and when its user is disabled or changes password.

Users and sessions are tables of the instance: backed up, restored, on PostgreSQL too.
Everything here works while the master key is locked (a console that cannot be logged in
to could not show the unlock form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from ams import audit, crypto
from ams.apikeys import Role
from ams.errors import AlreadyExists, AuthenticationRequired, BadInput, NotFound, PermissionDenied
from ams.instance import Instance
from ams.security import throttle
from ams.security.policy import check_password_strength

__all__ = [
    "ABSOLUTE",
    "IDLE",
    "LoggedIn",
    "SessionInfo",
    "UserInfo",
    "check_name",
    "create_user",
    "disable_user",
    "end_session",
    "list_users",
    "login",
    "open_session",
    "set_password",
]

IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
_ID_PREFIX = "u_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# A session's last_seen_at is written at most this often, so pages do not turn into writes.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class UserInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    password_changed_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": str(self.role),
            "created_at": self.created_at.isoformat(),
            "password_changed_at": self.password_changed_at.isoformat(),
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


@dataclass(frozen=True)
class SessionInfo:
    """Who a request's session belongs to, and the key of its CSRF tokens."""

    user: UserInfo
    token_hash: str
    csrf_secret: str
    created_at: datetime

    @property
    def actor(self) -> str:
        return f"user:{self.user.name}"


@dataclass(frozen=True)
class LoggedIn:
    session: SessionInfo
    token: str  # for the cookie only: never logged, never stored


def _info(row: Any) -> UserInfo:
    return UserInfo(
        row.id,
        row.name,
        Role(row.role),
        row.created_at,
        row.password_changed_at,
        row.disabled_at,
        row.last_login_at,
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadInput(
            f"user name {name[:70]!r} is not valid: 1 to 64 letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def _row_by_name(session: Any, name: str) -> Any:
    from ams.db.models.console import ConsoleUser

    return session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))


def create_user(instance: Instance, name: str, role: Role, password: str, actor: str) -> UserInfo:
    from ams.db.models.console import ConsoleUser

    check_name(name)
    check_password_strength(password, "console password")
    now = instance.clock.now()
    with instance.transaction() as session:
        if _row_by_name(session, name) is not None:
            raise AlreadyExists(f"a console user named {name!r} exists: choose another name")
        row = ConsoleUser(
            id=_ID_PREFIX + crypto.random_id(16),
            name=name,
            role=str(role),
            password_hash=crypto.hash_password(password),
            created_at=now,
            password_changed_at=now,
        )
        session.add(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.USER_CREATED,
            actor=actor,
            target=row.id,
            details={"name": name, "role": str(role)},
        )
        return _info(row)


def list_users(instance: Instance) -> list[UserInfo]:
    from ams.db.models.console import ConsoleUser

    with instance.session() as session:
        return [_info(r) for r in session.scalars(select(ConsoleUser).order_by(ConsoleUser.name))]


def _existing(session: Any, name: str) -> Any:
    row = _row_by_name(session, name)
    if row is None:
        raise NotFound(f"no console user {name!r}: see `ams user list`")
    return row


def disable_user(instance: Instance, name: str, actor: str) -> UserInfo:
    """Disable a user and end every session of theirs. Disabling twice changes nothing."""
    from ams.db.models.console import ConsoleSession

    with instance.transaction() as session:
        row = _existing(session, name)
        if row.disabled_at is None:
            row.disabled_at = instance.clock.now()
            session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
            audit.record(session, instance.clock, audit.Event.USER_DISABLED, actor=actor, target=row.id)
        return _info(row)


def set_password(instance: Instance, name: str, password: str, actor: str) -> UserInfo:
    """Replace a user's password; every session of theirs ends (log in again)."""
    from ams.db.models.console import ConsoleSession

    check_password_strength(password, "console password")
    with instance.transaction() as session:
        row = _existing(session, name)
        row.password_hash = crypto.hash_password(password)
        row.password_changed_at = instance.clock.now()
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
        audit.record(session, instance.clock, audit.Event.USER_PASSWORD_CHANGED, actor=actor, target=row.id)
        return _info(row)


def login(instance: Instance, name: str, password: str, client: str | None) -> LoggedIn:
    """Check a name and password; on success open a session.

    Every refusal says the same words and takes as long (an unknown name is checked against
    a dummy hash), so an answer tells nobody which part was wrong or whether the user exists.
    """
    from ams.db.models.console import ConsoleSession

    refused = AuthenticationRequired("wrong user name or password, or the user is disabled")
    # Counted before the slow hash (429 inside a wait after failures), forgiven on success.
    instance.login_slowdown.begin(name, client)
    with instance.transaction() as session:
        row = _row_by_name(session, name) if _NAME.match(name) else None
        ok = crypto.verify_password(row.password_hash if row is not None else None, password)
        if not ok or row is None or row.disabled_at is not None:
            user_id = row.id if row is not None else None
            session.rollback()
            # Recorded as event 1224, or past the throttle's bounds counted into 1203.
            throttle.refuse(
                instance,
                throttle.AuthKind.CONSOLE_LOGIN,
                address=client,
                key_id=None,
                event=audit.Event.USER_LOGIN_FAILED,
                target=user_id,
                error=refused,
                actor="console",
            )
        instance.login_slowdown.succeeded(name, client)
        now = instance.clock.now()
        if crypto.needs_rehash(row.password_hash):
            row.password_hash = crypto.hash_password(password)
        row.last_login_at = now
        token = crypto.random_secret(32)
        record = ConsoleSession(
            token_hash=crypto.hash_token(token),
            user_id=row.id,
            created_at=now,
            last_seen_at=now,
            csrf_secret=crypto.random_secret(32),
            client=(client or None) and client[:64],
        )
        session.add(record)
        # Sessions that ended by time are removed as new ones start, so the table stays small.
        session.execute(delete(ConsoleSession).where(ConsoleSession.created_at < now - ABSOLUTE))
        session.execute(delete(ConsoleSession).where(ConsoleSession.last_seen_at < now - IDLE))
        audit.record(
            session,
            instance.clock,
            audit.Event.USER_LOGGED_IN,
            actor=f"user:{row.name}",
            target=row.id,
            details={"client": client} if client else {},
        )
        info = SessionInfo(_info(row), record.token_hash, record.csrf_secret, now)
    return LoggedIn(info, token)


def open_session(instance: Instance, token: str | None, needed: Role = Role.READER) -> SessionInfo:
    """The session a cookie names, if it is still valid, and the role it needs."""
    from ams.db.models.console import ConsoleSession, ConsoleUser

    if not token or len(token) > 128:
        raise AuthenticationRequired("log in to the console")
    token_hash = crypto.hash_token(token)
    now = instance.clock.now()
    with instance.session() as session:
        record = session.get(ConsoleSession, token_hash)
        user = session.get(ConsoleUser, record.user_id) if record is not None else None
        if (
            record is None
            or user is None
            or user.disabled_at is not None
            or now - record.created_at > ABSOLUTE
            or now - record.last_seen_at > IDLE
        ):
            if record is not None:
                session.delete(record)
                session.commit()
            raise AuthenticationRequired("the console session has ended: log in again")
        if now - record.last_seen_at > _TOUCH_EVERY:
            record.last_seen_at = now
            session.commit()
        info = SessionInfo(_info(user), record.token_hash, record.csrf_secret, record.created_at)
    if not info.user.role.allows(needed):
        raise PermissionDenied(f"this page needs the {needed} role; {info.user.name} is a {info.user.role}")
    return info


def end_session(instance: Instance, token_hash: str, actor: str) -> None:
    """Log out: the session's token opens nothing any more."""
    from ams.db.models.console import ConsoleSession

    with instance.transaction() as session:
        record = session.get(ConsoleSession, token_hash)
        if record is None:
            return
        session.delete(record)
        audit.record(session, instance.clock, audit.Event.USER_LOGGED_OUT, actor=actor, target=record.user_id)
