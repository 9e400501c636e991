"""Device passwords: the rotation decision, accepting a new password, undo, and reading.

The server never sees a password in the clear except to test-decrypt what an agent sends
(so it refuses what it could not decrypt later) and when an authorised reader asks for it
(always audited). Blobs are stored exactly as the agent made them.

Versions of a device only grow: a new password must carry a version above every version
the server holds, and the rotation advice proposes one above both the server's and the
agent's. When the agent's version differs from the server's current one, one side was
restored from an older copy: rotate, reason ``rollback``, and record it.

Versions never run out: they are whole numbers up to ``MAX_VERSION`` (2**53 - 1, what
every JSON reader carries exactly; the columns are 64-bit), and one report may move a
device at most ``MAX_STEP`` above the highest version the server holds. Agents move by one
(or by the versions a restored database missed), so the top is out of reach (2**33
reports), and the advice never names a version the report would refuse: a version the
agent sends that the server cannot have issued (below 1, or at or above the reach of the
next report) is not used for ``next_version``, and the device rotates with reason
``rollback`` to a version the server accepts.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, case, func, select, update
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.clock import Clock
from ams.crypto import blob as password_blob
from ams.db.models.vault import Device, DevicePassword
from ams.errors import (
    CertificateKeyAbsent,
    Conflict,
    DecryptionFailed,
    MasterKeyLocked,
    NotFound,
    PasswordUndecryptable,
    PasswordVersionOutOfRange,
    PasswordVersionsExhausted,
    RollbackWindowClosed,
)
from ams.instance import Instance
from ams.vault import certificates, retention
from ams.vault import devices as devices_service
from ams.vault.devices import AuthenticatedDevice
from ams.vault.policy import PasswordPolicy, get_policy

__all__ = [
    "MAX_STEP",
    "MAX_VERSION",
    "RotationAdvice",
    "StoredPassword",
    "count_under",
    "counts_by_certificate",
    "decide",
    "expire_current_under",
    "read",
    "require_recoverable",
    "store",
    "store_blob",
    "undo",
]

REQUEST_PREFIX = "pr_"
_KEY_LOST = "the private key of its certificate is lost"
_NOT_DECRYPTING = "it does not decrypt with its certificate's private key"
MAX_BLOB_BYTES = 16384
MAX_VERSION = 2**53 - 1  # the largest integer JSON carries exactly everywhere
MAX_STEP = 2**20  # how far above the server's highest version one report may go


@dataclass(frozen=True)
class RotationAdvice:
    rotate: bool
    reason: str | None  # new | expired | forced | rollback
    current_version: int | None
    next_version: int
    certificate_thumbprint: str
    certificate_pem: str
    policy: PasswordPolicy

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotate": self.rotate,
            "reason": self.reason,
            "current_version": self.current_version,
            "next_version": self.next_version,
            "certificate": {"thumbprint": self.certificate_thumbprint, "pem": self.certificate_pem},
            "policy": self.policy.for_agent(),
        }


@dataclass(frozen=True)
class StoredPassword:
    request_id: str
    version: int
    effective_at: datetime
    expires_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "version": self.version,
            "effective_at": self.effective_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


def _current(session: Session, device_id: str) -> DevicePassword | None:
    return session.scalar(
        select(DevicePassword).where(
            DevicePassword.device_id == device_id, DevicePassword.is_current.is_(True)
        )
    )


def _highest_version(session: Session, device_id: str) -> int:
    return (
        session.scalar(select(func.max(DevicePassword.version)).where(DevicePassword.device_id == device_id))
        or 0
    )


def _reach(highest: int) -> int:
    """The highest version a report may carry when the server holds ``highest``."""
    return min(highest + MAX_STEP, MAX_VERSION)


def _exhausted(device_id: str, highest: int) -> PasswordVersionsExhausted:
    return PasswordVersionsExhausted(
        f"device {device_id} has used every password version up to {highest}: disable it "
        "(`ams device disable`) and register the device again (`ams-agent register`)"
    )


# -- GET /api/v1/agent/password -----------------------------------------------------------


def decide(instance: Instance, device: AuthenticatedDevice, reported_version: int | None) -> RotationAdvice:
    """Whether the device must rotate now, and why; with the certificate and the policy to use."""
    actor = f"device:{device.id}"
    # First, outside our transaction: it may generate the scope's first certificate.
    certificate = certificates.ensure_active(instance, device.scope, actor)
    now = instance.clock.now()
    with instance.transaction() as session:
        row = session.get(Device, device.id)
        if row is None:  # removed between authentication and now
            raise NotFound(f"no device {device.id}")
        current = _current(session, device.id)
        server_version = current.version if current is not None else None
        highest = _highest_version(session, device.id)
        if highest >= MAX_VERSION:
            raise _exhausted(device.id, highest)
        reach = _reach(highest)
        # A version the server cannot have issued (below 1, or so high that its successor
        # could not be reported) says nothing about versions in use: it is not built on.
        usable = reported_version is not None and 1 <= reported_version < reach
        if reported_version != server_version:
            # The agent knows a version the server does not hold as current (the database
            # was restored from an older copy), or the reverse (the device was reverted).
            reason: str | None = "rollback"
            details: dict[str, Any] = {"device_version": reported_version, "server_version": server_version}
            if reported_version is not None and not usable:
                details["device_version_ignored"] = True
            audit.record(
                session,
                instance.clock,
                audit.Event.PASSWORD_ROLLBACK_DETECTED,
                actor=actor,
                target=device.id,
                details=details,
            )
        elif current is None:
            reason = "new"
        elif row.force_rotation:
            reason = "forced"
        elif current.expires_at <= now:
            reason = "expired"
        else:
            reason = None
        basis = reported_version if reported_version is not None and usable else 0
        next_version = max(highest, basis) + 1
        policy = get_policy(session, device.scope)
    return RotationAdvice(
        rotate=reason is not None,
        reason=reason,
        current_version=server_version,
        next_version=next_version,
        certificate_thumbprint=certificate.thumbprint,
        certificate_pem=certificate.pem,
        policy=policy,
    )


# -- POST /api/v1/agent/password ----------------------------------------------------------


def _reject(instance: Instance, device: AuthenticatedDevice, reason: str) -> PasswordUndecryptable:
    with instance.transaction() as session:
        audit.record(
            session,
            instance.clock,
            audit.Event.PASSWORD_REJECTED,
            actor=f"device:{device.id}",
            target=device.id,
            outcome="failure",
            details={"reason": reason},
        )
    return PasswordUndecryptable()


def _test_decrypt(
    instance: Instance, device: AuthenticatedDevice, raw: bytes, account: str | None, version: int | None
) -> tuple[str, str, int]:
    """The blob's certificate thumbprint, account and version, once the blob is proven to open
    with the active key. ``account``/``version`` None: whatever the plaintext says (a blob
    written on a directory object carries nothing beside it, ams.vault.legacy)."""
    try:
        thumbprint = password_blob.blob_thumbprint(raw)
    except DecryptionFailed:
        raise _reject(instance, device, "malformed blob") from None
    active = certificates.active_key(instance, device.scope)
    if active is None or not crypto.constant_time_equal(active.thumbprint, thumbprint):
        raise _reject(
            instance, device, f"encrypted to a certificate that is not the active one ({thumbprint})"
        )
    if active.sealed_private_key is None:
        raise _reject(instance, device, f"the private key of {thumbprint} is absent")
    # MasterKeyLocked: 503, retry later
    private_key = certificates.unseal_private_key(instance, active.thumbprint, active.sealed_private_key)
    try:
        document = json.loads(password_blob.decrypt_password(raw, private_key))
    except DecryptionFailed:
        raise _reject(instance, device, "does not decrypt") from None
    except (ValueError, UnicodeDecodeError):
        raise _reject(instance, device, "the plaintext is not JSON") from None
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("password"), str)
        or not document["password"]
        or not isinstance(document.get("account"), str)
        or not 1 <= len(document["account"]) <= 64
        or document["account"] != (account if account is not None else document["account"])
        or type(document.get("version")) is not int
        or document["version"] != (version if version is not None else document["version"])
    ):
        raise _reject(
            instance, device, "the plaintext disagrees with the request (account, version or password)"
        )
    return thumbprint, document["account"], document["version"]


def decode_blob(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if 0 < len(raw) <= MAX_BLOB_BYTES else None


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise PasswordVersionOutOfRange(
            f"version {str(version)[:24]} is not a whole number from 1 to {MAX_VERSION}: report the "
            "next_version that GET /api/v1/agent/password advises"
        )


def store(
    instance: Instance, device: AuthenticatedDevice, account: str, version: int, blob_b64: str
) -> StoredPassword:
    """Accept a new password (as its blob) after test decryption; the previous one becomes history."""
    _check_version(version)
    raw = decode_blob(blob_b64)
    if raw is None:
        raise _reject(instance, device, "not base64, empty or too large")
    return _store(instance, device, raw, account, version)


def store_blob(instance: Instance, device: AuthenticatedDevice, raw: bytes) -> StoredPassword:
    """:func:`store` for a blob alone (written on a directory object, ams.vault.legacy): its
    account and version are the ones its plaintext holds, checked as a report's are."""
    if not 0 < len(raw) <= MAX_BLOB_BYTES:
        raise _reject(instance, device, "empty or too large")
    return _store(instance, device, raw, None, None)


def _store(
    instance: Instance, device: AuthenticatedDevice, raw: bytes, account: str | None, version: int | None
) -> StoredPassword:
    thumbprint, account, version = _test_decrypt(instance, device, raw, account, version)
    _check_version(version)
    actor = f"device:{device.id}"
    now = instance.clock.now()
    with instance.transaction() as session:
        row = session.get(Device, device.id, with_for_update=True)
        if row is None:
            raise NotFound(f"no device {device.id}")
        current = _current(session, device.id)
        if current is not None and current.version == version and current.blob == raw:
            # The same report again (the agent retried after losing our answer): same answer.
            return StoredPassword(
                current.request_id, current.version, current.effective_at, current.expires_at
            )
        highest = _highest_version(session, device.id)
        if version <= highest:
            raise Conflict(
                f"version {version} is not above the server's {highest}: ask GET /api/v1/agent/password again"
            )
        if highest >= MAX_VERSION:
            raise _exhausted(device.id, highest)
        reach = _reach(highest)
        if version > reach:
            # A jump this far would bring the device's versions toward the top of the range,
            # where the next one could no longer be expressed: refused, nothing changes.
            raise PasswordVersionOutOfRange(
                f"version {version} is more than {MAX_STEP} above the server's {highest} (at most "
                f"{reach} now): report the next_version that GET /api/v1/agent/password advises"
            )
        policy = get_policy(session, device.scope)
        if current is not None:
            current.is_current = False
            current.superseded_at = now
        new = DevicePassword(
            device_id=device.id,
            version=version,
            account=account,
            blob=raw,
            certificate_thumbprint=thumbprint,
            request_id=REQUEST_PREFIX + crypto.random_id(32),
            effective_at=now,
            expires_at=now + timedelta(days=policy.max_age_days),
            is_current=True,
            replaces_id=current.id if current is not None else None,
            answered_force=row.force_rotation,
            created_at=now,
        )
        session.add(new)
        row.current_version = version
        row.force_rotation = False
        audit.record(
            session,
            instance.clock,
            audit.Event.PASSWORD_ROTATED,
            actor=actor,
            target=device.id,
            details={
                "version": version,
                "previous_version": current.version if current is not None else None,
                "certificate": thumbprint,
                "request_id": new.request_id,
            },
        )
        session.flush()
        retention.apply(session, instance.clock, device.id, policy, actor)
        return StoredPassword(new.request_id, version, new.effective_at, new.expires_at)


# -- DELETE /api/v1/agent/password/{request_id} --------------------------------------------


def undo(instance: Instance, device: AuthenticatedDevice, request_id: str) -> int | None:
    """Undo the device's last update inside the rollback window; the version current again."""
    now = instance.clock.now()
    with instance.transaction() as session:
        device_row = session.get(Device, device.id, with_for_update=True)
        row = session.scalar(
            select(DevicePassword).where(
                DevicePassword.request_id == request_id, DevicePassword.device_id == device.id
            )
        )
        if device_row is None or row is None:
            raise NotFound(f"no password update {request_id[:40]!r} of this device")
        if not row.is_current:
            raise Conflict(
                f"the update {request_id} was already replaced by a newer one; it stays in history"
            )
        if now - row.created_at > retention.ROLLBACK_WINDOW:
            raise RollbackWindowClosed(
                f"the update {request_id} is older than the 60-second rollback window; "
                "it stays current: report the password the device really has as a new version"
            )
        previous = session.get(DevicePassword, row.replaces_id) if row.replaces_id is not None else None
        if previous is not None:
            previous.is_current = True
            previous.superseded_at = None
        device_row.current_version = previous.version if previous is not None else None
        if row.answered_force:
            device_row.force_rotation = True
        session.delete(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.PASSWORD_UPDATE_UNDONE,
            actor=f"device:{device.id}",
            target=device.id,
            details={
                "request_id": request_id,
                "removed_version": row.version,
                "restored_version": previous.version if previous is not None else None,
            },
        )
        return previous.version if previous is not None else None


# -- reading (ams password get, REST) -------------------------------------------------------


class _Keys:
    """Private keys by thumbprint for one read: None when lost or unknown."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._cache: dict[str, bytes | None] = {}

    def get(self, thumbprint: str) -> bytes | None:
        if thumbprint not in self._cache:
            try:
                self._cache[thumbprint] = certificates.private_key_der(self.instance, thumbprint)
            except NotFound:
                self._cache[thumbprint] = None
        return self._cache[thumbprint]


def _entry(keys: _Keys, device: Device, row: DevicePassword) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "device_id": device.id,
        "device_name": device.name,
        "account": row.account,
        "password": None,
        "recoverable": False,
        "version": row.version,
        "effective_at": row.effective_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "superseded_at": row.superseded_at.isoformat() if row.superseded_at else None,
        "certificate_thumbprint": row.certificate_thumbprint,
    }
    private_key = keys.get(row.certificate_thumbprint)
    if private_key is None:
        entry["unrecoverable_reason"] = _KEY_LOST
        return entry
    try:
        document = json.loads(password_blob.decrypt_password(row.blob, private_key))
        password = document["password"]
    except (DecryptionFailed, ValueError, UnicodeDecodeError, KeyError, TypeError):
        entry["unrecoverable_reason"] = _NOT_DECRYPTING
        return entry
    entry["password"] = password
    entry["recoverable"] = True
    return entry


def read(
    instance: Instance, ref: str, actor: str, *, history: bool = False, via: str = "cli"
) -> dict[str, Any]:
    """A device's current password (and with ``history``, the older ones), decrypted; audited.

    Without history the answer is the current entry; with it, ``{"current", "history"}``
    (newest first). Entries under a lost key read ``recoverable: false, password: null``.
    """
    with instance.session() as session:
        device = devices_service.find(session, ref)
        query = select(DevicePassword).where(DevicePassword.device_id == device.id)
        if not history:
            query = query.where(DevicePassword.is_current.is_(True))
        rows = list(session.scalars(query.order_by(DevicePassword.version.desc())))
    current_rows = [r for r in rows if r.is_current]
    if not history and not current_rows:
        raise NotFound(
            f"device {device.id} ({device.name}) has no password yet: it gets one at its next check-in"
        )
    keys = _Keys(instance)
    try:
        entries = [_entry(keys, device, r) for r in rows]
    except MasterKeyLocked:
        _audit_read(instance, device.id, actor, [], history, via, outcome="failure")
        raise
    _audit_read(instance, device.id, actor, [e["version"] for e in entries], history, via)
    current = next((e for e, r in zip(entries, rows, strict=True) if r.is_current), None)
    if not history:
        assert current is not None
        return current
    return {
        "current": current,
        "history": [e for e, r in zip(entries, rows, strict=True) if not r.is_current],
    }


def versions(instance: Instance, ref: str) -> list[dict[str, Any]]:
    """A device's rotation history, newest first: versions and times, never a password.

    Reads no secret, so it is not a password read and writes no audit event.
    """
    with instance.session() as session:
        device = devices_service.find(session, ref)
        rows = session.scalars(
            select(DevicePassword)
            .where(DevicePassword.device_id == device.id)
            .order_by(DevicePassword.version.desc())
        )
        return [
            {
                "version": r.version,
                "account": r.account,
                "current": bool(r.is_current),
                "effective_at": r.effective_at,
                "expires_at": r.expires_at,
                "superseded_at": r.superseded_at,
                "certificate_thumbprint": r.certificate_thumbprint,
            }
            for r in rows
        ]


def require_recoverable(entry: dict[str, Any]) -> str:
    """The password of a :func:`read` entry, or the error that says why there is none.

    A listing (REST, ``--history``) shows an unrecoverable password as such; a caller that
    needs the password itself (``ams password get DEVICE``, a script) must not get an empty
    one with success: a lost key is :class:`CertificateKeyAbsent`, a blob that does not
    decrypt is :class:`DecryptionFailed`.
    """
    if entry["recoverable"]:
        return str(entry["password"])
    what = (
        f"the password of device {entry['device_id']} ({entry['device_name']}), version "
        f"{entry['version']}, cannot be decrypted: {entry['unrecoverable_reason']}"
    )
    if entry["unrecoverable_reason"] == _KEY_LOST:
        raise CertificateKeyAbsent(
            f"{what}; import the PFX of certificate {entry['certificate_thumbprint'][:16]} with "
            "`ams certs import`, or let the device set a new password at its next check-in"
        )
    raise DecryptionFailed(
        f"{what}; the device sets a new password at its next check-in after `ams device expire "
        f"{entry['device_id']}`"
    )


def _audit_read(
    instance: Instance,
    device_id: str,
    actor: str,
    versions: list[int],
    history: bool,
    via: str,
    *,
    outcome: str = "success",
) -> None:
    with instance.transaction() as session:
        audit.record(
            session,
            instance.clock,
            audit.Event.PASSWORD_READ,
            actor=actor,
            target=device_id,
            outcome=outcome,
            details={"versions": versions, "history": history, "via": via},
        )


# -- for the certificates service ----------------------------------------------------------


def expire_current_under(session: Session, clock: Clock, thumbprint: str) -> int:
    """Expire now every current password encrypted to ``thumbprint`` (each device rotates at its
    next check-in with reason "expired"); how many are current under it. Runs inside the
    caller's transaction.

    One statement, whose row count is the answer: each current row under the key gets the
    earlier of its expiry and now (a second statement counting them would read the same
    100,000 rows again when a key of a large fleet is lost)."""
    now = clock.now()
    result = session.execute(
        update(DevicePassword)
        .where(DevicePassword.is_current.is_(True), DevicePassword.certificate_thumbprint == thumbprint)
        .values(expires_at=case((DevicePassword.expires_at > now, now), else_=DevicePassword.expires_at))
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount)


def count_under(session: Session, thumbprint: str) -> int:
    """How many passwords (current and history) are encrypted to ``thumbprint``: a count of the
    thumbprint's index alone, without reading the rows."""
    return (
        session.scalar(
            select(func.count())
            .select_from(DevicePassword)
            .where(DevicePassword.certificate_thumbprint == thumbprint)
        )
        or 0
    )


def counts_by_certificate(session: Session) -> dict[str, tuple[int, int]]:
    """thumbprint -> (current passwords, history passwords) encrypted to it."""
    counts: dict[str, list[int]] = {}
    rows = session.execute(
        select(DevicePassword.certificate_thumbprint, DevicePassword.is_current, func.count()).group_by(
            DevicePassword.certificate_thumbprint, DevicePassword.is_current
        )
    )
    for thumbprint, is_current, count in rows:
        counts.setdefault(thumbprint, [0, 0])[0 if is_current else 1] += count
    return {t: (c[0], c[1]) for t, c in counts.items()}
