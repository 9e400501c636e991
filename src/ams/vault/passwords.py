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
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.crypto import blob as password_blob
from ams.db.models import AuditEvent, InstanceRow
from ams.db.models.certificates import CertificateRow
from ams.db.models.vault import Device, DevicePassword, PasswordPolicyRow
from ams.errors import (
    AMSError,
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
from ams.vault import certificates, hotcache, hotsql, retention
from ams.vault import devices as devices_service
from ams.vault.devices import AuthenticatedDevice
from ams.vault.policy import DEFAULT_SCOPE, PasswordPolicy
from ams.vault.stored import counts_by_certificate, expire_current_under

__all__ = [
    "MAX_STEP",
    "MAX_VERSION",
    "RotationAdvice",
    "StoredPassword",
    "FirstCertificateNeeded",
    "check_in",
    "counts_by_certificate",
    "decide",
    "expire_current_under",
    "read",
    "report",
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


# -- the hot path: statements built once ----------------------------------------------------
#
# A check-in reads the device, its current password, its highest version and the
# instance's generation number (ams.vault.hotcache) in one statement; a report reads the
# device and the generation before its test decryption, and the rest under the write lock.
# The active certificate, its unsealed key and the policy come from the process's cache,
# read from the database only after a change bumped the generation. The statements are
# SQLAlchemy Core, built here once and run on the driver (ams.vault.hotsql), on the
# connection the process keeps for its hot path.

_D = cast(Table, Device.__table__)
_P = cast(Table, DevicePassword.__table__)
_H = _P.alias("h")
_C = cast(Table, CertificateRow.__table__)
_POLICY = cast(Table, PasswordPolicyRow.__table__)
_AUDIT = cast(Table, AuditEvent.__table__)
_HIGHEST = select(func.max(_H.c.version)).where(_H.c.device_id == _D.c.id).scalar_subquery()
_GENERATION = select(InstanceRow.generation).limit(1).scalar_subquery()


def _device_state(*, history: bool) -> Any:
    columns = [
        _D.c.id,
        _D.c.name,
        _D.c.scope,
        _D.c.status,
        _D.c.token_hash,
        _D.c.last_seen_at,
        _D.c.force_rotation,
        _P.c.id.label("password_id"),
        _P.c.version,
        _P.c.expires_at,
        _HIGHEST.label("highest"),
        _GENERATION.label("generation"),
    ]
    if history:
        count = (
            select(func.count())
            .select_from(_H)
            .where(_H.c.device_id == _D.c.id, _H.c.is_current.is_(False))
            .scalar_subquery()
        )
        columns += [_P.c.blob, _P.c.request_id, _P.c.effective_at, count.label("history")]
    return (
        select(*columns)
        .select_from(_D.outerjoin(_P, and_(_P.c.device_id == _D.c.id, _P.c.is_current.is_(True))))
        .where(_D.c.id == bindparam("device_id"))
    )


_CHECK_IN_STATE = _device_state(history=False)
# A report reads who the device is before its test decryption, and all the rest under the
# write lock (on PostgreSQL the device's row lock: FOR UPDATE).
_REPORT_AUTH = select(
    _D.c.id, _D.c.name, _D.c.scope, _D.c.status, _D.c.token_hash, _GENERATION.label("generation")
).where(_D.c.id == bindparam("device_id"))
_REPORT_STATE = _device_state(history=True).with_for_update(of=_D)
_ACTIVE_CERTIFICATE = select(_C.c.thumbprint, _C.c.certificate_der, _C.c.private_key_sealed).where(
    _C.c.scope == bindparam("scope"), _C.c.state == certificates.CertificateState.ACTIVE.value
)
_POLICIES = select(_POLICY).where(_POLICY.c.scope.in_(bindparam("scopes", expanding=True)))
_SEEN = update(_D).where(_D.c.id == bindparam("device_id")).values(last_seen_at=bindparam("now"))
_SUPERSEDE = (
    update(_P)
    .where(_P.c.id == bindparam("password_id"))
    .values(is_current=False, superseded_at=bindparam("now"))
)
_NEW_PASSWORD = insert(_P)
_DEVICE_ROTATED = (
    update(_D)
    .where(_D.c.id == bindparam("device_id"))
    .values(current_version=bindparam("version"), force_rotation=False, last_seen_at=bindparam("now"))
)
_AUDIT_INSERT = insert(_AUDIT)

# The same statements, run on the database driver (ams.vault.hotsql): compiled once per
# dialect, times converted as the models' type does.
_STATE_TIMES = ("last_seen_at", "expires_at", "effective_at")
_SQL_CHECK_IN_STATE = hotsql.Statement(_CHECK_IN_STATE, times=_STATE_TIMES)
_SQL_REPORT_AUTH = hotsql.Statement(_REPORT_AUTH)
_SQL_REPORT_STATE = hotsql.Statement(_REPORT_STATE, times=_STATE_TIMES)
_SQL_SEEN = hotsql.Statement(_SEEN, times=("now",))
_SQL_SUPERSEDE = hotsql.Statement(_SUPERSEDE, times=("now",))
_NEW_PASSWORD_KEYS = [
    "device_id",
    "version",
    "account",
    "blob",
    "certificate_thumbprint",
    "request_id",
    "effective_at",
    "expires_at",
    "is_current",
    "superseded_at",
    "replaces_id",
    "answered_force",
    "created_at",
]
_SQL_NEW_PASSWORD = hotsql.Statement(
    _NEW_PASSWORD,
    times=("effective_at", "expires_at", "superseded_at", "created_at"),
    keys=_NEW_PASSWORD_KEYS,
)
_SQL_DEVICE_ROTATED = hotsql.Statement(_DEVICE_ROTATED, times=("now",))
_SQL_AUDIT = hotsql.Statement(
    _AUDIT_INSERT, times=("at",), keys=["event_id", "at", "actor", "outcome", "target", "details"]
)


def _connect(instance: Instance) -> contextlib.AbstractContextManager[hotsql.Hot]:
    """A hot-path request's connection (ams.vault.hotsql.connect); its writers queue on
    SQLite at ``run/write.lock``."""
    return hotsql.connect(hotcache.for_instance(instance).kept(instance))


def _audit(conn: Connection, instance: Instance, event: audit.Event, **fields: Any) -> None:
    """:func:`ams.audit.record`, as one insert on the request's connection."""
    _SQL_AUDIT.execute(
        conn,
        {
            "event_id": int(event),
            "at": instance.clock.now(),
            "actor": fields["actor"],
            "outcome": fields.get("outcome", "success"),
            "target": fields.get("target"),
            "details": json.dumps(fields.get("details") or {}, sort_keys=True),
        },
    )


def _active(
    conn: Connection, cache: hotcache.HotCache, generation: int, scope: str
) -> hotcache.ActiveCertificate | None:
    known = cache.active(scope)
    if known is not False:
        assert not isinstance(known, bool)
        return known
    row = conn.execute(_ACTIVE_CERTIFICATE, {"scope": scope}).first()
    value = (
        hotcache.ActiveCertificate(
            row.thumbprint, crypto.certificate_pem(row.certificate_der), row.private_key_sealed
        )
        if row is not None
        else None
    )
    cache.put_active(generation, scope, value)
    return value


def _policy(conn: Connection, cache: hotcache.HotCache, generation: int, scope: str) -> PasswordPolicy:
    """:func:`ams.vault.policy.get_policy`, from the cache."""
    policy = cache.policy(scope)
    if policy is None:
        rows = {r.scope: r for r in conn.execute(_POLICIES, {"scopes": [scope, DEFAULT_SCOPE]})}
        row = rows.get(scope) or rows.get(DEFAULT_SCOPE)
        policy = (
            PasswordPolicy(
                scope=scope,
                length=row.length,
                max_age_days=row.max_age_days,
                history_keep_count=row.history_keep_count,
                history_keep_days=row.history_keep_days,
                account=row.account,
            )
            if row is not None
            else PasswordPolicy(scope=scope)
        )
        cache.put_policy(generation, scope, policy)
    return policy


def _private_key(
    instance: Instance, cache: hotcache.HotCache, generation: int, certificate: hotcache.ActiveCertificate
) -> bytes:
    key = cache.key(certificate.thumbprint)
    if key is None:
        assert certificate.sealed_private_key is not None
        # MasterKeyLocked: 503, retry later
        key = certificates.unseal_private_key(
            instance, certificate.thumbprint, certificate.sealed_private_key
        )
        cache.put_key(generation, certificate.thumbprint, key)
    return key


class FirstCertificateNeeded(Exception):
    """The device's scope has no active certificate yet, and generating it (RSA-4096, seconds
    of CPU) was not allowed here: raised only with ``generate=False``, for a caller that must
    not spend those seconds where it runs (the event loop of ``ams serve``); it asks again
    with ``generate=True`` where it may (a worker thread)."""

    def __init__(self, scope: str, actor: str) -> None:
        super().__init__(scope)
        self.scope = scope
        self.actor = actor


class _Refused(Exception):
    """The token does not open the device: answered outside the request's connection."""

    def __init__(self, known: bool) -> None:
        self.known = known


def _authenticated(row: hotsql.Row | None, secret: str | None) -> AuthenticatedDevice:
    """The device of the row, once the token's secret matches (``secret`` None: the caller
    authenticated the device already); raises _Refused, DevicePendingApproval, DeviceDisabled."""
    if secret is not None:
        if row is None or not devices_service.token_matches(secret, row.token_hash):
            raise _Refused(row is not None)
        devices_service.check_status(row.id, row.status)
    elif row is None:  # removed between authentication and now
        raise NotFound("no such device: it was removed")
    return AuthenticatedDevice(row.id, row.name, row.scope)


def _due_seen(row: hotsql.Row, now: datetime) -> bool:
    # Written at most once a minute, so check-ins do not each turn into a write.
    return bool(row.last_seen_at is None or now - row.last_seen_at > devices_service.LAST_SEEN_EVERY)


# -- GET /api/v1/agent/password -----------------------------------------------------------


def check_in(
    instance: Instance,
    token: str | None,
    reported_version: int | None,
    *,
    address: str | None = None,
    generate: bool = True,
) -> RotationAdvice:
    """``GET /api/v1/agent/password``: authenticate the device token and answer :func:`decide`,
    in one connection and (at most) one short write. With ``generate=False`` a scope without
    a certificate raises :class:`FirstCertificateNeeded` instead of generating it here."""
    device_id, secret = devices_service.split_token(token)
    return _check_in(instance, device_id, secret, reported_version, address, generate)


def decide(instance: Instance, device: AuthenticatedDevice, reported_version: int | None) -> RotationAdvice:
    """Whether the device must rotate now, and why; with the certificate and the policy to use."""
    return _check_in(instance, device.id, None, reported_version, None, True)


def _check_in(
    instance: Instance,
    device_id: str,
    secret: str | None,
    reported_version: int | None,
    address: str | None,
    generate: bool,
) -> RotationAdvice:
    cache = hotcache.for_instance(instance)
    actor = f"device:{device_id}"
    for _ in range(3):
        now = instance.clock.now()
        try:
            with _connect(instance) as hot:
                conn = hot.conn
                row = _SQL_CHECK_IN_STATE.first(conn, {"device_id": device_id}) if secret != "" else None
                device = _authenticated(row, secret)
                assert row is not None
                generation = cache.sync(row.generation)
                certificate = _active(conn, cache, generation, device.scope)
                if certificate is None:
                    hotsql.end_read(conn)
                    if not generate:
                        raise FirstCertificateNeeded(device.scope, actor)
                    # The scope's first certificate (RSA-4096, slow), with no transaction of ours open.
                    certificates.ensure_active(instance, device.scope, actor)
                    continue
                policy = _policy(conn, cache, generation, device.scope)
                advice, rollback = _advise(row, reported_version, certificate, policy, now)
                seen = secret is not None and _due_seen(row, now)
                hotsql.end_read(conn)
                if rollback is not None or seen:
                    # At most one short write: the rollback's audit event, last_seen_at.
                    with hot.writing():
                        if rollback is not None:
                            _audit(
                                conn,
                                instance,
                                audit.Event.PASSWORD_ROLLBACK_DETECTED,
                                actor=actor,
                                target=row.id,
                                details=rollback,
                            )
                        if seen:
                            _SQL_SEEN.execute(conn, {"device_id": row.id, "now": now})
                return advice
        except _Refused as refused:
            devices_service.refuse_token(instance, device_id, known=refused.known, address=address)
    raise Conflict(f"scope {device.scope} has no active certificate yet: try again")


def _advise(
    row: hotsql.Row,
    reported_version: int | None,
    certificate: hotcache.ActiveCertificate,
    policy: PasswordPolicy,
    now: datetime,
) -> tuple[RotationAdvice, dict[str, Any] | None]:
    """The advice, and the details of the rollback to audit (None: no rollback)."""
    server_version = row.version if row.password_id is not None else None
    highest = row.highest or 0
    if highest >= MAX_VERSION:
        raise _exhausted(row.id, highest)
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
        rollback: dict[str, Any] | None = details
    elif row.password_id is None:
        reason = "new"
    elif row.force_rotation:
        reason = "forced"
    elif row.expires_at <= now:
        reason = "expired"
    else:
        reason = None
    if reason != "rollback":
        rollback = None
    basis = reported_version if reported_version is not None and usable else 0
    advice = RotationAdvice(
        rotate=reason is not None,
        reason=reason,
        current_version=server_version,
        next_version=max(highest, basis) + 1,
        certificate_thumbprint=certificate.thumbprint,
        certificate_pem=certificate.pem,
        policy=policy,
    )
    return advice, rollback


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
    instance: Instance,
    device: AuthenticatedDevice,
    raw: bytes,
    account: str | None,
    version: int | None,
    active: hotcache.ActiveCertificate | None,
    private_key: Callable[[], bytes],
) -> tuple[str, str, int]:
    """The blob's certificate thumbprint, account and version, once the blob is proven to open
    with the active key. ``account``/``version`` None: whatever the plaintext says (a blob
    written on a directory object carries nothing beside it, ams.vault.legacy)."""
    try:
        thumbprint = password_blob.blob_thumbprint(raw)
    except DecryptionFailed:
        raise _reject(instance, device, "malformed blob") from None
    if active is None or not crypto.constant_time_equal(active.thumbprint, thumbprint):
        raise _reject(
            instance, device, f"encrypted to a certificate that is not the active one ({thumbprint})"
        )
    if active.sealed_private_key is None:
        raise _reject(instance, device, f"the private key of {thumbprint} is absent")
    key = private_key()  # MasterKeyLocked: 503, retry later
    try:
        document = json.loads(password_blob.decrypt_password(raw, key))
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


def report(
    instance: Instance,
    token: str | None,
    account: str,
    version: int,
    blob_b64: str,
    *,
    address: str | None = None,
) -> StoredPassword:
    """``POST /api/v1/agent/password``: authenticate the device token and :func:`store`."""
    device_id, secret = devices_service.split_token(token)
    return _store(instance, (device_id, secret, account, version, blob_b64, address))


def store(
    instance: Instance, device: AuthenticatedDevice, account: str, version: int, blob_b64: str
) -> StoredPassword:
    """Accept a new password (as its blob) after test decryption; the previous one becomes history."""
    return _store(instance, (device.id, None, account, version, blob_b64, None))


def store_blob(instance: Instance, device: AuthenticatedDevice, raw: bytes) -> StoredPassword:
    """:func:`store` for a blob alone (written on a directory object, ams.vault.legacy): its
    account and version are the ones its plaintext holds, checked as a report's are."""
    return _store(instance, (device.id, None, None, None, raw, None))


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise PasswordVersionOutOfRange(
            f"version {str(version)[:24]} is not a whole number from 1 to {MAX_VERSION}: report the "
            "next_version that GET /api/v1/agent/password advises"
        )


class _Moved(Exception):
    """Certificates or policies changed between the test decryption and the write: again."""


# What a report says: the device, the token's secret (None: authenticated already), the
# account and version (None: what the plaintext says), the blob, the client's address.
_Request = tuple[str, str | None, str | None, int | None, str | bytes, str | None]


@dataclass(frozen=True)
class PreparedReport:
    """A report whose device is authenticated and whose blob opened with the active key, not
    yet written: what :func:`store_prepared` writes. ``request`` is what the report said (to
    do it all again when certificates changed in between)."""

    request: _Request
    device: AuthenticatedDevice
    generation: int
    policy: PasswordPolicy
    thumbprint: str
    account: str
    version: int
    raw: bytes


def prepare_report(
    instance: Instance,
    token: str | None,
    account: str,
    version: int,
    blob_b64: str,
    *,
    address: str | None = None,
) -> PreparedReport:
    """The first half of :func:`report`: the token checked and the blob test-decrypted, with
    no transaction open; :func:`store_prepared` writes it."""
    device_id, secret = devices_service.split_token(token)
    return _prepare(instance, (device_id, secret, account, version, blob_b64, address))


def store_prepared(instance: Instance, reports: list[PreparedReport]) -> list[StoredPassword | AMSError]:
    """Write prepared reports in one transaction, one commit (group commit: the reports a
    worker decrypted in one turn of its event loop, ams.api.fastpath); for each, in order,
    what was stored or the error that refused it. A report that meets changed certificates,
    or a batch that fails as a whole, is done again on its own as :func:`report` does it
    (a batch commits all its writes or none)."""
    results: list[StoredPassword | AMSError | None] = [None] * len(reports)
    again: list[int] = []
    try:
        with _connect(instance) as hot, hot.writing():
            for i, prepared in enumerate(reports):
                try:
                    results[i] = _write(hot.conn, instance, prepared)
                except _Moved:
                    again.append(i)
                except AMSError as exc:  # raised before it wrote anything
                    results[i] = exc
    except Exception:  # noqa: BLE001 - nothing was committed: each report on its own
        again = list(range(len(reports)))
    for i in again:
        try:
            results[i] = _store(instance, reports[i].request)
        except AMSError as exc:
            results[i] = exc
    return [r for r in results if r is not None]


ReportRequest = _Request


def report_request(
    token: str | None, account: str, version: int, blob_b64: str, *, address: str | None = None
) -> ReportRequest:
    """What :func:`store_reports` takes for one ``POST /api/v1/agent/password``."""
    device_id, secret = devices_service.split_token(token)
    return (device_id, secret, account, version, blob_b64, address)


def store_reports(instance: Instance, requests: list[ReportRequest]) -> list[StoredPassword | AMSError]:
    """:func:`report` for reports that arrived together (ams.api.fastpath.ReportWrites), for
    each, in order, what was stored or the error that refused it. The work goes in stages:
    every device authenticated, then every blob test-decrypted, then all written with one
    commit (:func:`store_prepared`). A token is checked before its blob is decrypted, as
    one report alone; and Python code run just after an RSA decryption costs two to four
    times what it costs run after other Python code (the decryption leaves the core's
    caches cold), so each stage runs warm for all the reports (docs/performance.md)."""
    results: list[StoredPassword | AMSError | None] = [None] * len(requests)
    found: list[tuple[int, _Authenticated]] = []
    for i, request in enumerate(requests):
        try:
            found.append((i, _authenticate(instance, request)))
        except AMSError as exc:
            results[i] = exc
    prepared: list[tuple[int, PreparedReport]] = []
    for i, one in found:
        try:
            prepared.append((i, _decrypt(instance, one)))
        except AMSError as exc:
            results[i] = exc
    stored = store_prepared(instance, [p for _, p in prepared])
    for (i, _), result in zip(prepared, stored, strict=True):
        results[i] = result
    return [r for r in results if r is not None]


def _store(instance: Instance, request: _Request) -> StoredPassword:
    for _ in range(3):
        prepared = _prepare(instance, request)
        try:
            with _connect(instance) as hot, hot.writing():
                return _write(hot.conn, instance, prepared)
        except _Moved:
            continue
    raise Conflict("the certificates changed while the password was stored: report it again")


@dataclass(frozen=True)
class _Authenticated:
    """A report whose device is authenticated, before its test decryption."""

    request: _Request
    device: AuthenticatedDevice
    generation: int
    policy: PasswordPolicy
    active: hotcache.ActiveCertificate | None
    raw: bytes


def _prepare(instance: Instance, request: _Request) -> PreparedReport:
    return _decrypt(instance, _authenticate(instance, request))


def _authenticate(instance: Instance, request: _Request) -> _Authenticated:
    """1. Read (no lock): who the device is, and the active key, from the cache; the blob's
    shape checked."""
    device_id, secret, _account, version, blob, address = request
    cache = hotcache.for_instance(instance)
    try:
        with _connect(instance) as hot:
            conn = hot.conn
            row = _SQL_REPORT_AUTH.first(conn, {"device_id": device_id}) if secret != "" else None
            device = _authenticated(row, secret)
            assert row is not None
            generation = cache.sync(row.generation)
            active = _active(conn, cache, generation, device.scope)
            policy = _policy(conn, cache, generation, device.scope)
            hotsql.end_read(conn)
    except _Refused as refused:
        devices_service.refuse_token(instance, device_id, known=refused.known, address=address)
    if version is not None:  # a report's; a blob alone carries its own (checked below)
        _check_version(version)
    if isinstance(blob, bytes):
        raw: bytes | None = blob if 0 < len(blob) <= MAX_BLOB_BYTES else None
        if raw is None:
            raise _reject(instance, device, "empty or too large")
    else:
        raw = decode_blob(blob)
        if raw is None:
            raise _reject(instance, device, "not base64, empty or too large")
    assert active is None or isinstance(active, hotcache.ActiveCertificate)
    return _Authenticated(request, device, generation, policy, active, raw)


def _decrypt(instance: Instance, found: _Authenticated) -> PreparedReport:
    """2. Test-decrypt with no transaction open: the RSA work of one worker never holds
    another's write."""
    _device_id, _secret, account, version, _blob, _address = found.request
    active, generation = found.active, found.generation

    def private_key() -> bytes:
        assert active is not None  # _test_decrypt asks only for the active certificate's key
        return _private_key(instance, hotcache.for_instance(instance), generation, active)

    thumbprint, account, version = _test_decrypt(
        instance, found.device, found.raw, account, version, active, private_key
    )
    _check_version(version)
    return PreparedReport(
        found.request, found.device, generation, found.policy, thumbprint, account, version, found.raw
    )


def _write(conn: Connection, instance: Instance, prepared: PreparedReport) -> StoredPassword:
    """3. Write, in the caller's write transaction (the write lock held, so what is read here
    stays true until the commit). Every refusal is raised before anything is written."""
    device, generation, policy = prepared.device, prepared.generation, prepared.policy
    thumbprint, account, version, raw = prepared.thumbprint, prepared.account, prepared.version, prepared.raw
    actor = f"device:{device.id}"
    now = instance.clock.now()
    row = _SQL_REPORT_STATE.first(conn, {"device_id": device.id})
    if row is None:
        raise NotFound(f"no device {device.id}")
    if row.generation != generation:
        raise _Moved()  # rolls back; the next try reads the new certificates (and policy)
    current = row.password_id is not None
    if current and row.version == version and row.blob == raw:
        # The same report again (the agent retried after losing our answer): same answer.
        _SQL_SEEN.execute(conn, {"device_id": device.id, "now": now})
        return StoredPassword(row.request_id, row.version, row.effective_at, row.expires_at)
    highest = row.highest or 0
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
    if current:
        _SQL_SUPERSEDE.execute(conn, {"password_id": row.password_id, "now": now})
    request_id = REQUEST_PREFIX + crypto.random_id(32)
    expires_at = now + timedelta(days=policy.max_age_days)
    _SQL_NEW_PASSWORD.execute(
        conn,
        {
            "device_id": device.id,
            "version": version,
            "account": account,
            "blob": raw,
            "certificate_thumbprint": thumbprint,
            "request_id": request_id,
            "effective_at": now,
            "expires_at": expires_at,
            "is_current": True,
            "superseded_at": None,
            "replaces_id": row.password_id,
            "answered_force": bool(row.force_rotation),
            "created_at": now,
        },
    )
    _SQL_DEVICE_ROTATED.execute(conn, {"device_id": device.id, "version": version, "now": now})
    _audit(
        conn,
        instance,
        audit.Event.PASSWORD_ROTATED,
        actor=actor,
        target=device.id,
        details={
            "version": version,
            "previous_version": row.version if current else None,
            "certificate": thumbprint,
            "request_id": request_id,
        },
    )
    if row.history + (1 if current else 0) > policy.history_keep_count:
        # Only then can retention remove anything (it keeps history_keep_count at least).
        with Session(bind=conn) as session:
            retention.apply(session, instance.clock, device.id, policy, actor)
            session.flush()
    return StoredPassword(request_id, version, now, expires_at)


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


_SEALED_KEYS = select(_C.c.thumbprint, _C.c.private_key_sealed).where(
    _C.c.thumbprint.in_(bindparam("thumbprints", expanding=True))
)


def _read_state(*, history: bool) -> Any:
    """The device and its password rows (the current one, or all, newest first) and the
    generation number: one statement, so a read costs three (this, the audit, its commit)."""
    joined = _P.c.device_id == _D.c.id
    if not history:
        joined = and_(joined, _P.c.is_current.is_(True))
    return (
        select(
            _D.c.id.label("device_id"),
            _D.c.name.label("device_name"),
            _P.c.account,
            _P.c.version,
            _P.c.effective_at,
            _P.c.expires_at,
            _P.c.superseded_at,
            _P.c.certificate_thumbprint,
            _P.c.blob,
            _P.c.is_current,
            _GENERATION.label("generation"),
        )
        .select_from(_D.outerjoin(_P, joined))
        .where(_D.c.id == bindparam("device_id"))
        .order_by(_P.c.version.desc())
    )


_READ_CURRENT = _read_state(history=False)
_READ_HISTORY = _read_state(history=True)


class _Keys:
    """Private keys by thumbprint for one read (None when lost or unknown): from the process's
    cache (ams.vault.hotcache), else unsealed from the rows read on the read's connection."""

    def __init__(self, instance: Instance, conn: Connection, generation: int, thumbprints: set[str]) -> None:
        self.instance = instance
        self.cache = hotcache.for_instance(instance)
        self.generation = self.cache.sync(generation)
        self._found: dict[str, bytes | None] = {t: self.cache.key(t) for t in thumbprints}
        missing = [t for t, key in self._found.items() if key is None]
        self._sealed: dict[str, bytes | None] = (
            {r.thumbprint: r.private_key_sealed for r in conn.execute(_SEALED_KEYS, {"thumbprints": missing})}
            if missing
            else {}
        )

    def get(self, thumbprint: str) -> bytes | None:
        key = self._found.get(thumbprint)
        if key is None:
            sealed = self._sealed.get(thumbprint)
            if sealed is None:
                return None
            key = certificates.unseal_private_key(self.instance, thumbprint, sealed)  # MasterKeyLocked
            self._found[thumbprint] = key
            self.cache.put_key(self.generation, thumbprint, key)
        return key


def _entry(keys: _Keys, row: Row[Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "device_id": row.device_id,
        "device_name": row.device_name,
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
    instance: Instance,
    ref: str,
    actor: str | Callable[[Connection], str],
    *,
    history: bool = False,
    via: str = "cli",
) -> dict[str, Any]:
    """A device's current password (and with ``history``, the older ones), decrypted; audited.

    ``ref`` is a device id, or a name that exactly one device has. Without history the
    answer is the current entry; with it, ``{"current", "history"}`` (newest first). Entries
    under a lost key read ``recoverable: false, password: null``.

    The hot path of an administrator's read (docs/architecture.md): one connection; one
    statement reads the device, its passwords and the generation number; the keys come from
    the process's cache (or their sealed rows); the reads end before RSA works; the audit
    event is written last. ``actor`` may be a function of the connection that checks the
    reader and names it (the REST route's API key, :func:`ams.apikeys.authenticate`, on
    the same connection): it runs before anything of the device is read.
    """
    with _connect(instance) as hot:
        conn = hot.conn
        who = actor(conn) if callable(actor) else actor
        ref = ref.strip()
        statement = _READ_HISTORY if history else _READ_CURRENT
        is_id = ref.startswith(devices_service.ID_PREFIX)
        rows = conn.execute(statement, {"device_id": ref}).all() if is_id else []
        if not rows:  # not an id: the name of one device
            rows = conn.execute(statement, {"device_id": devices_service.named(conn, ref)}).all()
        first = rows[0]
        passwords = [r for r in rows if r.version is not None]
        if not history and not passwords:
            raise NotFound(
                f"device {first.device_id} ({first.device_name}) has no password yet: "
                "it gets one at its next check-in"
            )
        keys = _Keys(instance, conn, first.generation, {r.certificate_thumbprint for r in passwords})
        conn.commit()  # the reads end here: no transaction stays open while RSA works
        try:
            entries = [_entry(keys, r) for r in passwords]
        except MasterKeyLocked:
            _audit_read(hot, instance, first.device_id, who, [], history, via, outcome="failure")
            raise
        _audit_read(hot, instance, first.device_id, who, [e["version"] for e in entries], history, via)
    current = next((e for e, r in zip(entries, passwords, strict=True) if r.is_current), None)
    if not history:
        assert current is not None
        return current
    return {
        "current": current,
        "history": [e for e, r in zip(entries, passwords, strict=True) if not r.is_current],
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
    hot: hotsql.Hot,
    instance: Instance,
    device_id: str,
    actor: str,
    versions: list[int],
    history: bool,
    via: str,
    *,
    outcome: str = "success",
) -> None:
    # A write of the hot path: queued with the rotations' writes (ams.vault.hotsql.writing).
    with hot.writing():
        _audit(
            hot.conn,
            instance,
            audit.Event.PASSWORD_READ,
            actor=actor,
            target=device_id,
            outcome=outcome,
            details={"versions": versions, "history": history, "via": via},
        )
