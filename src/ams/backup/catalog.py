"""The catalog: one row per backup attempt, in the instance's database.

Through the ORM for an open instance; ``*_sqlite`` do the same on a plain :mod:`sqlite3`
connection for ``ams backup create`` on the embedded database (:mod:`ams.backup.embedded`),
which is why the database layer is imported inside the functions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ams.db.sqlite import db_time
from ams.home import Home

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ams.backup.create import BackupResult
    from ams.db.models.backups import BackupRecord
    from ams.instance import Instance

__all__ = [
    "BackupEntry",
    "add_complete",
    "add_complete_sqlite",
    "add_failed",
    "default_destination",
    "default_destination_sqlite",
    "list_backups",
    "mark_verified",
]


@dataclass(frozen=True)
class BackupEntry:
    backup_id: str
    kind: str
    status: str
    path: str | None
    created_at: datetime
    size_bytes: int | None
    duration_seconds: float | None
    fingerprint: str
    schema_revision: str | None
    recovery_password_set_at: datetime | None
    verified_at: datetime | None
    verified_ok: bool | None
    error: str | None
    exists: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "status": self.status,
            "path": self.path,
            "exists": self.exists,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "duration_seconds": self.duration_seconds,
            "master_key_fingerprint": self.fingerprint,
            "schema_revision": self.schema_revision,
            "recovery_password_set_at": (
                self.recovery_password_set_at.isoformat() if self.recovery_password_set_at else None
            ),
            "needs_recovery_password_set_at": (
                self.recovery_password_set_at.isoformat() if self.recovery_password_set_at else None
            ),
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
            "verified_ok": self.verified_ok,
            "error": self.error,
        }


def _entry(row: BackupRecord) -> BackupEntry:
    return BackupEntry(
        backup_id=row.id,
        kind=row.kind,
        status=row.status,
        path=row.path,
        created_at=row.created_at,
        size_bytes=row.size_bytes,
        duration_seconds=row.duration_seconds,
        fingerprint=row.mk_fingerprint,
        schema_revision=row.schema_revision,
        recovery_password_set_at=row.recovery_password_set_at,
        verified_at=row.verified_at,
        verified_ok=row.verified_ok,
        error=row.error,
        exists=bool(row.path) and Path(row.path).is_file(),
    )


def default_destination(instance: Instance) -> Path:
    from ams.db.models.backups import BackupSchedule

    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        if row is not None and row.destination:
            return Path(row.destination)
    return instance.home.backups_dir


def default_destination_sqlite(conn: sqlite3.Connection, home: Home) -> Path:
    row = conn.execute("SELECT destination FROM backup_schedule WHERE id = 1").fetchone()
    return Path(row[0]) if row is not None and row[0] else home.backups_dir


def list_backups(instance: Instance, *, include_failed: bool = True) -> list[BackupEntry]:
    """Newest first."""
    from sqlalchemy import select

    from ams.db.models.backups import BackupRecord

    with instance.session() as session:
        query = select(BackupRecord).order_by(BackupRecord.created_at.desc(), BackupRecord.id)
        if not include_failed:
            query = query.where(BackupRecord.status == "complete")
        return [_entry(r) for r in session.scalars(query)]


def add_complete(session: Session, result: BackupResult) -> None:
    from ams.db.models.backups import BackupRecord

    set_at = result.recovery_password_set_at
    session.add(
        BackupRecord(
            id=result.backup_id,
            kind=result.kind,
            status="complete",
            path=str(result.path),
            created_at=result.created_at,
            size_bytes=result.size_bytes,
            duration_seconds=result.duration_seconds,
            mk_fingerprint=result.fingerprint,
            schema_revision=result.schema_revision,
            recovery_password_set_at=datetime.fromisoformat(set_at) if set_at else None,
        )
    )


def add_complete_sqlite(conn: sqlite3.Connection, result: BackupResult) -> None:
    """:func:`add_complete` on a plain sqlite3 connection, inside the caller's transaction."""
    set_at = result.recovery_password_set_at
    conn.execute(
        "INSERT INTO backups (id, kind, status, path, created_at, size_bytes, duration_seconds,"
        " mk_fingerprint, schema_revision, recovery_password_set_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            result.backup_id,
            result.kind,
            "complete",
            str(result.path),
            db_time(result.created_at),
            result.size_bytes,
            result.duration_seconds,
            result.fingerprint,
            result.schema_revision,
            db_time(datetime.fromisoformat(set_at)) if set_at else None,
        ),
    )


def add_failed(
    session: Session, *, backup_id: str, kind: str, at: datetime, fingerprint: str, error: str
) -> None:
    from ams.db.models.backups import BackupRecord

    session.add(
        BackupRecord(
            id=backup_id,
            kind=kind,
            status="failed",
            path=None,
            created_at=at,
            mk_fingerprint=fingerprint,
            error=error,
        )
    )


def mark_verified(session: Session, backup_id: str, at: datetime, ok: bool, error: str | None = None) -> None:
    from ams.db.models.backups import BackupRecord

    row = session.get(BackupRecord, backup_id)
    if row is not None:
        row.verified_at = at
        row.verified_ok = ok
        if error:
            row.error = error


def created_details(result: BackupResult) -> dict[str, Any]:
    return {
        "kind": result.kind,
        "file": str(result.path),
        "size": result.size_bytes,
        "seconds": round(result.duration_seconds, 3),
    }
