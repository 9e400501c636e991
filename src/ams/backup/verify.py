"""``ams backup verify``: offline checks, and with ``--deep`` a restore drill.

Plain verify proves the archive is whole and authentic: the tar structure byte for byte,
``SHA256SUMS``, the seal (which needs the master key), every payload chunk, and the inner
archive's paths. ``--deep`` unpacks into a scratch folder, opens it as an instance and
proves that every certificate with a private key decrypts a sample of the passwords
encrypted to it; certificates without a private key are reported with the number of
passwords they leave unrecoverable. A drill that finds unrecoverable passwords fails
(:class:`BackupUnrecoverable`, carrying the report) unless the caller accepts them.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ams.backup.archive import ArchiveReader, iter_payload_members
from ams.backup.staging import (
    PasswordSource,
    StagedBackup,
    install_service_wrapping,
    master_key_for,
    stage_archive,
    stage_service_key,
)
from ams.clock import Clock, clock_from_env
from ams.config import Settings
from ams.db import migrate
from ams.db.engine import make_engine, sqlite_url
from ams.errors import AMSError, BackupInvalid, BackupUnrecoverable, BadInput, NotFound
from ams.instance import Instance

__all__ = ["verify_and_record", "verify_backup"]

_SAMPLE = 5


def verify_backup(
    path: Path,
    *,
    instance: Instance | None = None,
    password: PasswordSource | None = None,
    deep: bool = False,
    allow_unrecoverable: bool = False,
    clock: Clock | None = None,
    sample: int = _SAMPLE,
) -> dict[str, Any]:
    """A report of what was checked; raises :class:`BackupInvalid` (naming what failed).

    With ``deep``, passwords the backup cannot decrypt raise :class:`BackupUnrecoverable`
    (its ``report`` is this report) unless ``allow_unrecoverable``.
    """
    if allow_unrecoverable and not deep:
        raise BadInput("--allow-unrecoverable goes with --deep (only the restore drill decrypts passwords)")
    clock = clock or clock_from_env()
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        report: dict[str, Any] = {
            "file": str(path),
            "backup_id": manifest.backup_id,
            "instance_id": manifest.instance_id,
            "kind": manifest.kind,
            "created_at": manifest.created_at.isoformat(),
            "schema_revision": manifest.schema_revision,
            "master_key_fingerprint": manifest.fingerprint,
            "recovery_password_set_at": manifest.recovery_password_set_at,
            "needs": manifest.needs_password_hint(),
            "counts": manifest.data.get("counts", {}),
            "checks": ["structure"],
        }
        reader.check_manifest_sum()
        report["checks"].append("manifest sum")
        master_key, via = master_key_for(reader, instance, password, writes=False)
        report["key_from"] = via
        if not deep:
            reader.check_seal(master_key)
            report["checks"].append("seal")
            stream = reader.payload(master_key)
            roots = set()
            for _member, parts, _inner in iter_payload_members(stream):  # type: ignore[arg-type]
                roots.add("/".join(parts[:2]) if parts[0] == "database" else parts[0])
            stream.finish()
            if "database/ams.db" not in roots:
                raise BackupInvalid("the payload holds no database/ams.db")
            report["checks"] += ["payload chunks", "payload sum", "payload paths"]
        else:
            scratch = Path(tempfile.mkdtemp(prefix="ams-verify-"))
            try:
                staged = stage_archive(reader, master_key, scratch / "home")
                report["checks"] += ["seal", "payload chunks", "payload sum", "payload paths", "database"]
                report["deep"] = _drill(staged, master_key, manifest.instance_id, clock, sample)
                report["checks"].append("restore drill")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    report["ok"] = True
    lost = report.get("deep", {}).get("unrecoverable_passwords", 0)
    if lost:
        report["unrecoverable_accepted"] = allow_unrecoverable
        if not allow_unrecoverable:
            report["ok"] = False
            certificates = len(report["deep"]["without_private_key"])
            raise BackupUnrecoverable(
                f"the restore drill found {lost} password(s) this backup cannot decrypt "
                f"({certificates} certificate(s) without their private key"
                + (
                    f", {report['deep']['passwords_under_unknown_certificates']} under no known certificate"
                    if report["deep"]["passwords_under_unknown_certificates"]
                    else ""
                )
                + "): import the lost certificates' PFX files (`ams certs import`) and back up again, "
                "or accept them with --allow-unrecoverable",
                report,
            )
    return report


def verify_and_record(path: Path, instance: Instance, *, actor: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`verify_backup`, and when the file is an archive of this instance's catalog (a
    row's ``path``), record the result there (``verified_at``, ``verified_ok``) with event
    1502, success or failure. A copy elsewhere is verified but recorded nowhere."""
    from ams import audit
    from ams.backup import catalog
    from ams.db.models.backups import BackupRecord

    # The catalog's row for this very file (by its path): a copy elsewhere, damaged or not,
    # says nothing about the cataloged archive, whatever backup id its manifest carries.
    with instance.session() as session:
        backup_id = session.scalars(
            select(BackupRecord.id).where(BackupRecord.path == str(path.expanduser().absolute()))
        ).first()
    deep = bool(kwargs.get("deep"))
    details: dict[str, Any] = {}
    failure: AMSError | None = None
    try:
        report = verify_backup(path, instance=instance, **kwargs)
        ok, error = True, None
    except (BackupInvalid, NotFound) as exc:
        report, ok, error = {}, False, exc.message
        failure = exc
    except BackupUnrecoverable as exc:
        # The archive is whole (the catalog says verified: retention may count on it); the
        # drill failed, and the event says so.
        report, ok, error = exc.report, True, exc.message
        failure = exc
    if deep and report.get("deep", {}).get("unrecoverable_passwords"):
        details["unrecoverable_passwords"] = report["deep"]["unrecoverable_passwords"]
        details["unrecoverable_accepted"] = failure is None
    if backup_id is not None:
        with instance.transaction() as session:
            if session.get(BackupRecord, backup_id) is not None:
                catalog.mark_verified(session, backup_id, instance.clock.now(), ok, error)
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.BACKUP_VERIFIED,
                    actor=actor,
                    target=backup_id,
                    outcome="success" if failure is None else "failure",
                    details={"deep": deep, "ok": ok, "error": error, **details},
                )
    if failure is not None:
        raise failure
    return report


def _drill(
    staged: StagedBackup, master_key: bytes, instance_id: str, clock: Clock, sample: int
) -> dict[str, Any]:
    """Open the staged backup as an instance and decrypt samples under every certificate."""
    engine = make_engine(sqlite_url(staged.db_path, create=False))
    try:
        if staged.revision != migrate.head_revision():
            migrate.upgrade(engine)
        key, kind, commit, _abort = stage_service_key(staged.home)
        commit()
        install_service_wrapping(staged.db_path, master_key, instance_id, key, kind, clock.now())
        # The scratch copy is opened with default settings: never the environment's
        # database URL, which would point the drill at a live database.
        settings = Settings()
        drill = Instance(staged.home, settings, engine, clock)
        drill.keyring.master_key()
        return _certificate_checks(drill, staged.db_path, sample)
    finally:
        engine.dispose()


def _password_counts(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "device_passwords" not in tables:
            return {}
        query = (
            "SELECT certificate_thumbprint, count(*) FROM device_passwords GROUP BY certificate_thumbprint"
        )
        return {t: n for t, n in conn.execute(query)}
    finally:
        conn.close()


def _password_sample(db_path: Path, thumbprint: str, sample: int) -> list[bytes]:
    """Up to ``sample`` blobs spread over the rows (first, last and between), never all of them."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM device_passwords WHERE certificate_thumbprint = ? ORDER BY id", (thumbprint,)
            )
        ]
        picked = (
            sorted({ids[round(i * (len(ids) - 1) / max(1, sample - 1))] for i in range(sample)})
            if ids
            else []
        )
        return [
            conn.execute("SELECT blob FROM device_passwords WHERE id = ?", (i,)).fetchone()[0] for i in picked
        ]
    finally:
        conn.close()


def _certificate_checks(drill: Instance, db_path: Path, sample: int) -> dict[str, Any]:
    try:
        from ams.crypto.blob import decrypt_password
        from ams.vault import certificates as vault_certificates
    except ImportError:
        return {"certificates_checked": False, "reason": "the certificates capability is not installed"}
    from ams.backup.sqlite_image import database_facts

    certificates = database_facts(db_path)["certificates"]
    counts = _password_counts(db_path)
    results = []
    unrecoverable = 0
    for cert in certificates:
        thumbprint = cert["thumbprint"]
        total = counts.get(thumbprint, 0)
        key = vault_certificates.private_key_der(drill, thumbprint)
        entry: dict[str, Any] = {
            "thumbprint": thumbprint,
            "scope": cert.get("scope"),
            "has_private_key": key is not None,
            "passwords": total,
        }
        if key is None:
            entry["unrecoverable_passwords"] = total
            unrecoverable += total
        else:
            picked = _password_sample(db_path, thumbprint, sample)
            for blob in picked:
                try:
                    decrypt_password(blob, key)
                except AMSError as exc:
                    raise BackupInvalid(
                        f"restore drill: a password under certificate {thumbprint[:16]} does not decrypt "
                        f"({exc.message})"
                    ) from None
            entry["sample_decrypted"] = len(picked)
        results.append(entry)
    known = {c["thumbprint"] for c in certificates}
    orphans = sum(n for t, n in counts.items() if t not in known)
    return {
        "certificates_checked": True,
        "certificates": results,
        "without_private_key": [r["thumbprint"] for r in results if not r["has_private_key"]],
        "unrecoverable_passwords": unrecoverable + orphans,
        "passwords_under_unknown_certificates": orphans,
    }
