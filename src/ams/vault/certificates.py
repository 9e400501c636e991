"""Password encryption certificates: one active per scope, older ones kept for history.

A scope is ``agent`` (the store ams-agent devices encrypt to) or a directory id (``d-`` and
10 hex digits). The private key of each certificate is sealed in the database by the secret
box (purpose ``certificate-private-key``, context ``certificate:<thumbprint>``); a *lost*
certificate has none, and the passwords encrypted to it cannot be read until its PFX is
imported again. Every interface (CLI, REST, web) calls these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ams import audit, crypto
from ams.db.models.certificates import CertificateRow
from ams.errors import (
    AlreadyExists,
    BadInput,
    CertificateKeyAbsent,
    Conflict,
    NotFound,
    NotWritable,
)
from ams.home import atomic_write
from ams.instance import Instance
from ams.paths import check_new_file
from ams.security.policy import check_password_strength
from ams.vault import binding, hotcache, stored

__all__ = [
    "KEY_PURPOSE",
    "ActiveKey",
    "CertificateInfo",
    "CertificateState",
    "ImportResult",
    "LostResult",
    "activate",
    "active_certificate",
    "active_key",
    "check_export",
    "check_scope",
    "create",
    "ensure_active",
    "export",
    "export_to_file",
    "get",
    "import_pfx",
    "list_certificates",
    "lost",
    "private_key_der",
    "unseal_private_key",
]

KEY_PURPOSE = "certificate-private-key"
# Generated keys are RSA-4096 (docs/security.md). Tests that do not look at the size may
# lower this to keep key generation fast.
KEY_SIZE = 4096
_SCOPE = re.compile(r"^(agent|d-[0-9a-f]{10})$")
_HEX = re.compile(r"^[0-9a-f]+$")


class CertificateState(StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    LOST = "lost"


@dataclass(frozen=True)
class CertificateInfo:
    thumbprint: str
    scope: str
    subject: str
    not_before: datetime
    not_after: datetime
    state: str
    source: str
    has_private_key: bool
    created_at: datetime
    activated_at: datetime | None
    lost_at: datetime | None
    certificate_der: bytes
    current_passwords: int = 0
    history_passwords: int = 0

    @property
    def pem(self) -> str:
        return crypto.certificate_pem(self.certificate_der)

    def expired(self, now: datetime) -> bool:
        return self.not_after <= now

    def to_dict(self) -> dict[str, Any]:
        return {
            "thumbprint": self.thumbprint,
            "scope": self.scope,
            "subject": self.subject,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "state": self.state,
            "source": self.source,
            "has_private_key": self.has_private_key,
            "created_at": self.created_at.isoformat(),
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
            "lost_at": self.lost_at.isoformat() if self.lost_at else None,
            "current_passwords": self.current_passwords,
            "history_passwords": self.history_passwords,
        }


@dataclass(frozen=True)
class ImportResult:
    certificate: CertificateInfo
    restored: bool  # True: the private key of a lost certificate came back

    def to_dict(self) -> dict[str, Any]:
        return {**self.certificate.to_dict(), "restored": self.restored}


@dataclass(frozen=True)
class LostResult:
    certificate: CertificateInfo
    replacement: CertificateInfo | None  # the new active certificate, when one was generated
    expired_passwords: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "lost": self.certificate.to_dict(),
            "replacement": self.replacement.to_dict() if self.replacement else None,
            "expired_passwords": self.expired_passwords,
        }


def check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise BadInput(
            f"unknown scope {scope!r}: use agent or a directory id (d- and 10 lowercase hex digits)"
        )
    return scope


def _context(thumbprint: str) -> str:
    return f"certificate:{thumbprint}"


def _info(row: CertificateRow, counts: tuple[int, int] = (0, 0)) -> CertificateInfo:
    return CertificateInfo(
        thumbprint=row.thumbprint,
        scope=row.scope,
        subject=row.subject,
        not_before=row.not_before,
        not_after=row.not_after,
        state=row.state,
        source=row.source,
        has_private_key=row.private_key_sealed is not None,
        created_at=row.created_at,
        activated_at=row.activated_at,
        lost_at=row.lost_at,
        certificate_der=row.certificate_der,
        current_passwords=counts[0],
        history_passwords=counts[1],
    )


def _counts(session: Session) -> dict[str, tuple[int, int]]:
    return stored.counts_by_certificate(session)


_MIN_PREFIX = 8


def _row(session: Session, thumbprint: str, *, for_update: bool = False) -> CertificateRow:
    """The row of a thumbprint, or of a unique prefix of at least 8 hex digits."""
    wanted = thumbprint.strip().lower().replace(":", "")
    if not wanted or not _HEX.match(wanted) or len(wanted) > 64:
        raise BadInput(f"{thumbprint!r} is not a certificate thumbprint: see `ams certs list`")
    row = session.get(CertificateRow, wanted, with_for_update=for_update)
    if row is not None:
        return row
    if len(wanted) >= _MIN_PREFIX:
        matches = session.scalars(
            select(CertificateRow)
            .where(CertificateRow.thumbprint.startswith(wanted, autoescape=True))
            .limit(2)
        ).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadInput(f"more than one certificate starts with {wanted}: give more of the thumbprint")
    elif session.scalars(
        select(CertificateRow.thumbprint).where(CertificateRow.thumbprint.startswith(wanted, autoescape=True))
    ).first():
        # A prefix too short to count as one, not a certificate that does not exist.
        raise BadInput(
            f"{wanted!r} is too short to name a certificate: give at least {_MIN_PREFIX} hex digits of "
            "the thumbprint (`ams certs list` shows 16)"
        )
    raise NotFound(f"no certificate {thumbprint!r}: see `ams certs list`")


def _active_row(session: Session, scope: str) -> CertificateRow | None:
    return session.scalars(
        select(CertificateRow).where(
            CertificateRow.scope == scope, CertificateRow.state == CertificateState.ACTIVE.value
        )
    ).first()


# -- reading ---------------------------------------------------------------------------------


def list_certificates(instance: Instance, scope: str | None = None) -> list[CertificateInfo]:
    """Every certificate (expired and lost ones too), with how many passwords each protects."""
    if scope is not None:
        check_scope(scope)
    with instance.session() as session:
        query = select(CertificateRow).order_by(CertificateRow.scope, CertificateRow.created_at)
        if scope is not None:
            query = query.where(CertificateRow.scope == scope)
        rows = session.scalars(query).all()
        counts = _counts(session)
    return [_info(r, counts.get(r.thumbprint, (0, 0))) for r in rows]


def get(instance: Instance, thumbprint: str) -> CertificateInfo:
    with instance.session() as session:
        row = _row(session, thumbprint)
        return _info(row, _counts(session).get(row.thumbprint, (0, 0)))


def active_certificate(instance: Instance, scope: str) -> CertificateInfo | None:
    with instance.session() as session:
        row = _active_row(session, scope)
        return _info(row) if row is not None else None


class ActiveKey(NamedTuple):
    thumbprint: str
    sealed_private_key: bytes | None  # None when lost; open it with unseal_private_key


def active_key(instance: Instance, scope: str) -> ActiveKey | None:
    """The scope's active certificate's thumbprint and sealed private key, in one query (a
    rotation's report needs both, and nothing else of the certificate); None when it has none."""
    with instance.session() as session:
        row = session.execute(
            select(CertificateRow.thumbprint, CertificateRow.private_key_sealed)
            .where(CertificateRow.scope == scope, CertificateRow.state == CertificateState.ACTIVE.value)
            .limit(1)
        ).first()
    return ActiveKey(row.thumbprint, row.private_key_sealed) if row is not None else None


def unseal_private_key(instance: Instance, thumbprint: str, sealed: bytes) -> bytes:
    """The PKCS#8 DER private key of a certificate's sealed key; MasterKeyLocked while locked."""
    return instance.keyring.box.open(KEY_PURPOSE, _context(thumbprint), sealed)


def private_key_der(instance: Instance, thumbprint: str) -> bytes | None:
    """The PKCS#8 DER private key; None when lost. NotFound for an unknown thumbprint;
    MasterKeyLocked while the master key is locked."""
    with instance.session() as session:
        row = _row(session, thumbprint)
        tp, sealed = row.thumbprint, row.private_key_sealed
    if sealed is None:
        return None
    return unseal_private_key(instance, tp, sealed)


# -- creating and activating -----------------------------------------------------------------


def _generate(instance: Instance, scope: str) -> tuple[bytes, bytes]:
    return crypto.generate_certificate(
        f"AMS password encryption {scope}", key_size=KEY_SIZE, now=instance.clock.now()
    )


def _new_row(instance: Instance, cert_der: bytes, key_der: bytes, scope: str, source: str) -> CertificateRow:
    facts = crypto.describe(cert_der)
    return CertificateRow(
        thumbprint=facts.thumbprint,
        scope=scope,
        subject=facts.subject[:255],
        not_before=facts.not_before,
        not_after=facts.not_after,
        certificate_der=cert_der,
        private_key_sealed=instance.keyring.box.seal(KEY_PURPOSE, _context(facts.thumbprint), key_der),
        state=CertificateState.STANDBY.value,
        source=source,
        created_at=instance.clock.now(),
    )


def _make_active(instance: Instance, session: Session, row: CertificateRow, actor: str) -> str | None:
    """Make ``row`` the scope's active certificate; the previous one becomes standby."""
    previous = _active_row(session, row.scope)
    if previous is not None and previous.thumbprint != row.thumbprint:
        previous.state = CertificateState.STANDBY.value
        session.flush()  # the partial unique index allows one active row per scope at a time
    row.state = CertificateState.ACTIVE.value
    row.activated_at = instance.clock.now()
    hotcache.bump(session)
    audit.record(
        session,
        instance.clock,
        audit.Event.CERTIFICATE_ACTIVATED,
        actor=actor,
        target=row.thumbprint,
        details={"scope": row.scope, "previous": previous.thumbprint if previous is not None else None},
    )
    return previous.thumbprint if previous is not None else None


class _Superseded(Exception):
    """Another request gave the scope its first certificate while we generated ours."""


def _create(
    instance: Instance, scope: str, actor: str, *, activate: bool, first_only: bool = False
) -> CertificateInfo | None:
    check_scope(scope)
    instance.keyring.box  # noqa: B018 - raises MasterKeyLocked before the slow key generation
    cert_der, key_der = _generate(instance, scope)
    try:
        with instance.transaction() as session:
            row = _new_row(instance, cert_der, key_der, scope, "generated")
            session.add(row)
            session.flush()  # on SQLite this takes the write lock: the check below is current
            has_active = _active_row(session, scope) is not None
            if first_only and has_active:
                raise _Superseded()  # roll back: ours is not needed
            make_active = activate or not has_active
            hotcache.bump(session)
            audit.record(
                session,
                instance.clock,
                audit.Event.CERTIFICATE_CREATED,
                actor=actor,
                target=row.thumbprint,
                details={"scope": scope, "activated": make_active},
            )
            if make_active:
                _make_active(instance, session, row, actor)
            info = _info(row)
    except _Superseded:
        return None
    except IntegrityError:
        # Another process made this scope's first active certificate at the same moment.
        raise Conflict("another certificate became active at the same time: run the command again") from None
    return info


def create(instance: Instance, scope: str, actor: str, *, activate: bool = False) -> CertificateInfo:
    """Generate a certificate for ``scope``; it becomes active when asked, or when the scope
    has no active certificate yet."""
    info = _create(instance, scope, actor, activate=activate)
    assert info is not None  # only first_only gives None
    return info


def ensure_active(instance: Instance, scope: str, actor: str) -> CertificateInfo:
    """The scope's active certificate, generated (RSA-4096) when the scope has none.

    When first uses race, one certificate wins and the others are discarded, so nobody is
    handed a certificate that is not (or stops being) the active one."""
    check_scope(scope)
    current = active_certificate(instance, scope)
    if current is not None:
        return current
    try:
        made = _create(instance, scope, actor, activate=False, first_only=True)
    except Conflict:
        made = None
    if made is not None:
        return made
    current = active_certificate(instance, scope)
    if current is None:
        raise Conflict(f"scope {scope} has no active certificate yet: try again")
    return current


def activate(instance: Instance, thumbprint: str, actor: str) -> CertificateInfo:
    """Make a certificate the active one of its scope: devices encrypt to it from now on."""
    with instance.transaction() as session:
        row = _row(session, thumbprint, for_update=True)
        if row.state == CertificateState.ACTIVE.value:
            return _info(row)
        if row.private_key_sealed is None:
            raise CertificateKeyAbsent(
                f"certificate {row.thumbprint} is lost (its private key is not in AMS): import its "
                "PFX with `ams certs import` first; nothing was changed"
            )
        if row.not_after <= instance.clock.now():
            raise Conflict(
                f"certificate {row.thumbprint} expired on {row.not_after:%Y-%m-%d}: activate another one, "
                "or make one with `ams certs new`; nothing was changed"
            )
        _make_active(instance, session, row, actor)
        return _info(row)


# -- export and import -------------------------------------------------------------------------


def _pfx(instance: Instance, thumbprint: str, password: str, compat: bool) -> tuple[str, bytes]:
    check_password_strength(password, "PFX password")
    with instance.session() as session:
        row = _row(session, thumbprint)
        tp, sealed, cert_der = row.thumbprint, row.private_key_sealed, row.certificate_der
    if sealed is None:
        raise CertificateKeyAbsent(
            f"certificate {tp} is lost: AMS has no private key to export; import its PFX if you have one"
        )
    key_der = instance.keyring.box.open(KEY_PURPOSE, _context(tp), sealed)
    return tp, crypto.export_pfx(cert_der, key_der, password, compat=compat)


def _audit_export(instance: Instance, thumbprint: str, actor: str, compat: bool) -> None:
    with instance.transaction() as session:
        audit.record(
            session,
            instance.clock,
            audit.Event.CERTIFICATE_EXPORTED,
            actor=actor,
            target=thumbprint,
            details={"compat": compat},
        )


def export(instance: Instance, thumbprint: str, password: str, actor: str, *, compat: bool = False) -> bytes:
    """The certificate with its private key as a PFX protected by ``password`` (audited)."""
    tp, data = _pfx(instance, thumbprint, password, compat)
    _audit_export(instance, tp, actor, compat)
    return data


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path`` 0600, atomically: a reader never sees half a file, and
    without ``force`` an existing file is never replaced."""
    directory = path.parent
    if not directory.is_dir():
        raise NotWritable(f"cannot write {path}: the folder {directory} does not exist")
    exists = AlreadyExists(f"{path} exists: choose another --out, or pass --force to replace it")
    if path.exists() and not force:
        raise exists
    try:
        written = atomic_write(path, data, 0o600, replace=force)
    except OSError as exc:
        raise NotWritable(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
    if not written:
        raise exists


def check_export(instance: Instance, thumbprint: str, out: Path, *, force: bool = False) -> CertificateInfo:
    """What ``export_to_file`` would refuse, checked before anyone types a password."""
    check_new_file(out, "--out", example="certificate.pfx", force=force)
    info = get(instance, thumbprint)
    if not info.has_private_key:
        raise CertificateKeyAbsent(
            f"certificate {info.thumbprint} is lost: AMS has no private key to export; "
            "import its PFX if you have one"
        )
    instance.keyring.box  # noqa: B018 - raises MasterKeyLocked
    return info


def export_to_file(
    instance: Instance,
    thumbprint: str,
    out: Path,
    password: str,
    actor: str,
    *,
    compat: bool = False,
    force: bool = False,
) -> CertificateInfo:
    """``ams certs export``: the PFX written to ``out`` (0600, atomically)."""
    info = check_export(instance, thumbprint, out, force=force)
    _, data = _pfx(instance, info.thumbprint, password, compat)
    _write_private(out, data, force=force)
    _audit_export(instance, info.thumbprint, actor, compat)  # only once the file is in place
    return info


def import_pfx(
    instance: Instance, data: bytes, password: str, scope: str, actor: str, *, activate: bool = False
) -> ImportResult:
    """Import a certificate with its private key. For a *lost* certificate this restores its
    key, and the passwords encrypted to it read again."""
    check_scope(scope)
    cert_der, key_der = crypto.import_pfx(data, password)
    facts = crypto.describe(cert_der)
    if activate and facts.not_after <= instance.clock.now():
        raise Conflict(
            f"the certificate expired on {facts.not_after:%Y-%m-%d}: import it without --activate "
            "(it still decrypts history); nothing was changed"
        )
    box = instance.keyring.box
    with instance.transaction() as session:
        row = session.get(CertificateRow, facts.thumbprint, with_for_update=True)
        restored = False
        if row is not None:
            if row.scope != scope:
                raise Conflict(
                    f"certificate {row.thumbprint} belongs to scope {row.scope}: import it with "
                    f"--scope {row.scope}; nothing was changed"
                )
            if row.private_key_sealed is not None:
                raise AlreadyExists(
                    f"certificate {row.thumbprint} is already in AMS ({row.state}, with its private key); "
                    "nothing was changed"
                )
            row.private_key_sealed = box.seal(KEY_PURPOSE, _context(row.thumbprint), key_der)
            row.state = CertificateState.STANDBY.value
            row.lost_at = None
            restored = True
        else:
            row = _new_row(instance, cert_der, key_der, scope, "imported")
            session.add(row)
            session.flush()
        make_active = activate or _active_row(session, scope) is None
        hotcache.bump(session)
        audit.record(
            session,
            instance.clock,
            audit.Event.CERTIFICATE_IMPORTED,
            actor=actor,
            target=row.thumbprint,
            details={"scope": scope, "restored": restored, "activated": make_active},
        )
        if make_active:
            _make_active(instance, session, row, actor)
        info = _info(row, _counts(session).get(row.thumbprint, (0, 0)))
    return ImportResult(info, restored)


# -- lost keys ---------------------------------------------------------------------------------


def lost(instance: Instance, thumbprint: str, actor: str) -> LostResult:
    """Declare a private key lost: drop it, make sure the scope has a new active certificate
    (generating one), and expire every current password encrypted to it, so each device
    rotates to the new certificate at its next check-in. One transaction. For a directory's
    certificate, every device of that directory is forced to rotate, and the bound ones see
    expiration time 0 on their objects (ams.vault.legacy)."""

    with instance.session() as session:
        row = _row(session, thumbprint)
        tp, scope, state = row.thumbprint, row.scope, row.state
        needs_new = state == CertificateState.ACTIVE.value or _active_row(session, scope) is None
    if state == CertificateState.LOST.value:
        raise Conflict(f"certificate {tp} is already marked lost; nothing was changed")
    generated: tuple[bytes, bytes] | None = None
    if needs_new:
        instance.keyring.box  # noqa: B018 - raises MasterKeyLocked before anything changes
        generated = _generate(instance, scope)
    with instance.transaction() as session:
        row = _row(session, tp, for_update=True)
        if row.state == CertificateState.LOST.value:
            raise Conflict(f"certificate {tp} is already marked lost; nothing was changed")
        row.state = CertificateState.LOST.value
        row.private_key_sealed = None
        row.lost_at = instance.clock.now()
        session.flush()
        replacement: CertificateRow | None = None
        if generated is not None and _active_row(session, scope) is None:
            replacement = _new_row(instance, generated[0], generated[1], scope, "generated")
            session.add(replacement)
            session.flush()
            audit.record(
                session,
                instance.clock,
                audit.Event.CERTIFICATE_CREATED,
                actor=actor,
                target=replacement.thumbprint,
                details={"scope": scope, "activated": True, "replaces_lost": tp},
            )
            _make_active(instance, session, replacement, actor)
        expired = stored.expire_current_under(session, instance.clock, tp)
        # A directory's devices keep their passwords on their objects: each is forced too
        # (ams.vault.binding), so a legacy agent reading its object rotates.
        forced = binding.force_scope(session, instance.clock, scope, actor, f"certificate {tp} lost")
        hotcache.bump(session)
        audit.record(
            session,
            instance.clock,
            audit.Event.CERTIFICATE_LOST,
            actor=actor,
            target=tp,
            details={
                "scope": scope,
                "replacement": replacement.thumbprint if replacement is not None else None,
                "expired": expired,
                "forced": len(forced),
            },
        )
        # The lost key's counts alone: its current passwords are the ones just expired (a
        # count over every certificate's passwords would read the whole table again).
        info = _info(row, (expired, stored.count_under(session, tp) - expired))
        new_info = _info(replacement) if replacement is not None else None
    binding.publish_forced(instance, forced, actor)
    return LostResult(info, new_info, expired)
