"""The master key on this machine: unlocked by the service key, or by the recovery password.

At open, the keyring tries the *service wrapping* with the service key. When that fails
(new machine, lost key file, database restored from elsewhere) the instance is **locked**:
everything that needs a secret raises :class:`MasterKeyLocked` until ``ams security
unlock`` opens the *recovery wrapping* with the recovery password and writes a new service
key and service wrapping for this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.clock import Clock
from ams.db.models import InstanceRow, KeyWrapping
from ams.errors import BadInput, Conflict, DecryptionFailed, MasterKeyLocked, NotWritable, WrongPassword
from ams.home import Home
from ams.security.policy import check_password_strength
from ams.security.service_key import (
    RECOVERY,
    SERVICE,
    ServiceKeySource,
    open_service_wrapping,
    wrapping_aad,
)

__all__ = ["Keyring", "MasterKeyState", "initial_wrappings"]


class MasterKeyState(StrEnum):
    UNLOCKED = "unlocked"
    LOCKED = "locked"


class Keyring:
    def __init__(
        self,
        home: Home,
        session_factory: Callable[[], Session],
        clock: Clock,
        source: ServiceKeySource | None = None,
    ) -> None:
        self.home = home
        self._sessions = session_factory
        self.clock = clock
        self.source = source or ServiceKeySource(home)
        self._master_key: bytes | None = None
        self._box: crypto.SecretBox | None = None
        self.lock_reason: str | None = None
        with self._sessions() as session:
            # The two columns every schema revision has (a command may open an older one).
            row = session.execute(select(InstanceRow.id, InstanceRow.master_key_fingerprint)).one()
            self.instance_id: str = row.id
            self.fingerprint: str = row.master_key_fingerprint

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> MasterKeyState:
        return MasterKeyState.UNLOCKED if self._master_key else MasterKeyState.LOCKED

    def recovery_password_set_at(self) -> datetime | None:
        with self._sessions() as session:
            row = session.get(KeyWrapping, RECOVERY)
            return row.created_at if row else None

    @property
    def box(self) -> crypto.SecretBox:
        """The secret box; raises :class:`MasterKeyLocked` while the key is locked."""
        if self._box is None:
            self.try_service_unlock()
        if self._box is None:
            raise MasterKeyLocked(f"master key locked: run `ams security unlock` ({self.lock_reason})")
        return self._box

    def master_key(self) -> bytes:
        self.box  # noqa: B018 - raises when locked
        assert self._master_key is not None
        return self._master_key

    def _accept(self, master_key: bytes) -> None:
        if crypto.fingerprint(master_key) != self.fingerprint:
            raise DecryptionFailed("the unwrapped key is not this instance's master key")
        self._master_key = master_key
        self._box = crypto.SecretBox(master_key)
        self.lock_reason = None

    # -- unlocking --------------------------------------------------------------------

    def try_service_unlock(self) -> MasterKeyState:
        """Open the service wrapping with the service key, if both are there and agree."""
        if self._master_key is not None:
            return MasterKeyState.UNLOCKED
        try:
            key = self.source.read()
        except (BadInput, NotWritable) as exc:
            self.lock_reason = exc.message
            return MasterKeyState.LOCKED
        if key is None:
            self.lock_reason = f"no service key at {self.source.describe()}"
            return MasterKeyState.LOCKED
        with self._sessions() as session:
            row = session.get(KeyWrapping, SERVICE)
            wrapping = row.wrapping if row else None
        if wrapping is None:
            self.lock_reason = "the database holds no service wrapping"
            return MasterKeyState.LOCKED
        try:
            self._accept(open_service_wrapping(wrapping, key, self.instance_id, self.fingerprint))
        except DecryptionFailed:
            self.lock_reason = (
                f"the service key at {self.source.describe()} does not open this database's "
                "master key (a new machine, or a database restored from elsewhere)"
            )
            return MasterKeyState.LOCKED
        return MasterKeyState.UNLOCKED

    def unlock_with_recovery_password(
        self, password: str, actor: str, *, move_to_key_file: bool = False
    ) -> None:
        """Unwrap the MK with the recovery password; write a new service key and wrapping.

        When the service wrapping was made for a key this process does not have (a systemd
        credential or AMS_SERVICE_KEY given to the service only), writing a key file would
        leave the service locked out: that is refused unless ``move_to_key_file``.
        """
        with self._sessions() as session:
            row = session.get(KeyWrapping, RECOVERY)
            if row is None:
                raise DecryptionFailed("the database holds no recovery wrapping")
            wrapping = crypto.WrappedKey.from_json(row.wrapping)
            service_row = session.get(KeyWrapping, SERVICE)
            previous_source = service_row.key_source if service_row else None
        moving = previous_source in ("environment", "credential") and self.source.kind == "file"
        if moving and not move_to_key_file:
            where = (
                "AMS_SERVICE_KEY"
                if previous_source == "environment"
                else "the systemd credential ams-service-key"
            )
            raise Conflict(
                f"this instance's service key comes from {where}, which this shell does not have: "
                "run the unlock where the service's key is provided, or pass --move-to-key-file "
                "to use keys/service.key from now on; nothing was changed"
            )
        try:
            mk = crypto.unwrap_with_password(wrapping, password, wrapping_aad(RECOVERY, self.instance_id))
        except DecryptionFailed:
            with self._sessions() as session, session.begin():
                audit.record(
                    session,
                    self.clock,
                    audit.Event.MASTER_KEY_UNLOCK_FAILED,
                    actor=actor,
                    outcome="failure",
                )
            raise WrongPassword(
                "the recovery password is wrong; nothing was changed. It is the password "
                "printed by `ams init` or set last with `ams security recovery-password set`"
            ) from None
        if crypto.fingerprint(mk) != self.fingerprint:
            raise DecryptionFailed("the recovery wrapping holds another instance's key")
        self._write_service_wrapping(mk, actor, audit.Event.MASTER_KEY_UNLOCKED)
        self._accept(mk)

    def _write_service_wrapping(self, mk: bytes, actor: str, event: audit.Event) -> None:
        key, commit, abort = self.source.stage_new()
        wrapped = crypto.wrap_with_key(mk, key, wrapping_aad(SERVICE, self.instance_id))
        try:
            with self._sessions() as session, session.begin():
                row = session.get(KeyWrapping, SERVICE)
                now = self.clock.now()
                if row is None:
                    row = KeyWrapping(kind=SERVICE, wrapping=wrapped.to_json(), created_at=now)
                    session.add(row)
                row.wrapping = wrapped.to_json()
                row.created_at = now
                row.key_source = self.source.kind
                audit.record(session, self.clock, event, actor=actor)
                audit.record(
                    session,
                    self.clock,
                    audit.Event.SERVICE_KEY_REPLACED,
                    actor=actor,
                    details={"source": self.source.kind},
                )
        except BaseException:
            abort()
            raise
        commit()

    # -- the recovery password --------------------------------------------------------

    def set_recovery_password(self, password: str, actor: str) -> datetime:
        """Replace the one recovery wrapping. Needs the master key unlocked."""
        check_password_strength(password, "recovery password")
        mk = self.master_key()
        wrapped = crypto.wrap_with_password(mk, password, wrapping_aad(RECOVERY, self.instance_id))
        now = self.clock.now()
        with self._sessions() as session, session.begin():
            row = session.get(KeyWrapping, RECOVERY)
            if row is None:
                session.add(KeyWrapping(kind=RECOVERY, wrapping=wrapped.to_json(), created_at=now))
            else:
                row.wrapping = wrapped.to_json()
                row.created_at = now
            audit.record(session, self.clock, audit.Event.RECOVERY_PASSWORD_SET, actor=actor)
        return now


def initial_wrappings(
    master_key: bytes,
    instance_id: str,
    service_key: bytes,
    recovery_password: str,
    *,
    now: datetime,
    key_source: str,
) -> list[KeyWrapping]:
    """The two wrappings ``ams init`` stores."""
    service = crypto.wrap_with_key(master_key, service_key, wrapping_aad(SERVICE, instance_id))
    recovery = crypto.wrap_with_password(master_key, recovery_password, wrapping_aad(RECOVERY, instance_id))
    return [
        KeyWrapping(kind=SERVICE, wrapping=service.to_json(), key_source=key_source, created_at=now),
        KeyWrapping(kind=RECOVERY, wrapping=recovery.to_json(), created_at=now),
    ]
