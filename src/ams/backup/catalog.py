"""The catalog: one row per backup attempt, in the instance's database.

Through the ORM for an open instance; ``*_sqlite`` do the same on a plain :mod:`sqlite3`
connection for ``ams backup create`` on the embedded database (:mod:`ams.backup.embedded`),
which is why the database layer is imported inside the functions.

Each row records the home that wrote the archive (``home_id``, the manifest's and
``instance.home_id``): retention deletes only this home's archives, so a copy restored
from another home's backup never touches that home's files. :func:`rescan` makes the
catalog true to what the folders hold again (after a restore, which brings back an older
catalog, and on demand with ``ams backup list --rescan``): it reads each file's header
(manifest, its sum, the seal when the key is at hand), never trusting a file name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ams.backup import leftovers
from ams.clock import as_utc
from ams.db.sqlite import db_time
from ams.errors import AMSError
from ams.home import Home

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ams.db.models.backups import BackupRecord
    from ams.instance import Instance

# The schedule's defaults (ams.backup.schedule), here so that a restore can write the
# schedule row without loading the database layer.
SCHEDULE_DEFAULT_AT = "02:00"
SCHEDULE_DEFAULT_RETAIN_DAYS = 14

__all__ = [
    "BackupEntry",
    "MadeBackup",
    "RescanResult",
    "add_complete",
    "add_complete_sqlite",
    "add_failed",
    "clean_leftovers",
    "default_destination",
    "default_destination_sqlite",
    "list_backups",
    "mark_verified",
    "rescan",
    "rescan_sqlite",
    "scan_folders",
]


class MadeBackup(Protocol):
    """What the catalog records of a backup just written (``ams.backup.create.BackupResult``):
    a protocol, so that the catalog does not import the module that writes backups, which
    imports it."""

    @property
    def backup_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def duration_seconds(self) -> float: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def schema_revision(self) -> str: ...
    @property
    def recovery_password_set_at(self) -> str | None: ...
    @property
    def home_id(self) -> str | None: ...
    @property
    def manifest(self) -> dict[str, Any]: ...


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
    home_id: str | None = None
    written_here: bool | None = None

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
            "home_id": self.home_id,
            "written_here": self.written_here,
        }


def _entry(row: BackupRecord, home_id: str | None = None) -> BackupEntry:
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
        exists=row.path is not None and bool(row.path) and Path(row.path).is_file(),
        home_id=row.home_id,
        written_here=(row.home_id == home_id) if home_id and row.status == "complete" else None,
    )


def default_destination(instance: Instance) -> Path:
    """The schedule's destination; this home's backups/ while the schedule is paused (a
    restore brought another home's destination, not yet confirmed) or none is set."""
    from ams.db.models.backups import BackupSchedule

    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        if row is not None and row.destination and not row.paused_reason:
            return Path(row.destination)
    return instance.home.backups_dir


def default_destination_sqlite(conn: sqlite3.Connection, home: Home) -> Path:
    row = conn.execute("SELECT destination, paused_reason FROM backup_schedule WHERE id = 1").fetchone()
    return Path(row[0]) if row is not None and row[0] and not row[1] else home.backups_dir


def clean_leftovers(instance: Instance, actor: str) -> list[str]:
    """Remove what a crashed backup (a restore's pre-restore backup among them) left in this
    home's backup folders (ams.backup.leftovers); audit it (1509). Returns the paths."""
    from ams import audit

    # Not a paused schedule's destination: another home's folder until confirmed.
    folders = {instance.home.backups_dir, default_destination(instance)}
    removed: list[str] = []
    for folder in sorted(folders):
        names = leftovers.clean(folder)
        removed += [str(folder / n) for n in names]
        if names:
            with instance.transaction() as session:
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.BACKUP_LEFTOVERS_REMOVED,
                    actor=actor,
                    details={"folder": str(folder), "names": names},
                )
    return removed


def list_backups(instance: Instance, *, include_failed: bool = True) -> list[BackupEntry]:
    """Newest first."""
    from sqlalchemy import select

    from ams.db.models.backups import BackupRecord

    home_id = instance.home_id
    with instance.session() as session:
        query = select(BackupRecord).order_by(BackupRecord.created_at.desc(), BackupRecord.id)
        if not include_failed:
            query = query.where(BackupRecord.status == "complete")
        return [_entry(r, home_id) for r in session.scalars(query)]


def add_complete(session: Session, result: MadeBackup) -> None:
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
            home_id=result.home_id,
        )
    )


def add_complete_sqlite(conn: sqlite3.Connection, result: MadeBackup) -> None:
    """:func:`add_complete` on a plain sqlite3 connection, inside the caller's transaction."""
    set_at = result.recovery_password_set_at
    conn.execute(
        "INSERT INTO backups (id, kind, status, path, created_at, size_bytes, duration_seconds,"
        " mk_fingerprint, schema_revision, recovery_password_set_at, home_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            result.home_id,
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


def created_details(result: MadeBackup) -> dict[str, Any]:
    return {
        "kind": result.kind,
        "file": str(result.path),
        "size": result.size_bytes,
        "seconds": round(result.duration_seconds, 3),
    }


# -- reconciling the catalog with the folders -------------------------------------------------


@dataclass
class RescanResult:
    """What :func:`rescan` found and changed."""

    folders: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    leftovers_removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.moved or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folders": self.folders,
            "added": self.added,
            "moved": self.moved,
            "removed": self.removed,
            "unreadable": self.unreadable,
            "leftovers_removed": self.leftovers_removed,
        }


@dataclass(frozen=True)
class _Found:
    path: Path
    backup_id: str
    kind: str
    created_at: datetime
    size_bytes: int
    fingerprint: str
    schema_revision: str
    recovery_password_set_at: datetime | None
    home_id: str | None


def _record_of(item: _Found) -> Any:
    """The catalog row of an archive found on disk (a complete backup of this instance)."""
    from ams.db.models.backups import BackupRecord

    return BackupRecord(
        id=item.backup_id,
        kind=item.kind,
        status="complete",
        path=str(item.path),
        created_at=item.created_at,
        size_bytes=item.size_bytes,
        mk_fingerprint=item.fingerprint,
        schema_revision=item.schema_revision,
        recovery_password_set_at=item.recovery_password_set_at,
        home_id=item.home_id,
    )


def _insert_sqlite(conn: sqlite3.Connection, item: _Found) -> None:
    """:func:`_record_of` on a plain sqlite3 connection."""
    conn.execute(
        "INSERT INTO backups (id, kind, status, path, created_at, size_bytes, mk_fingerprint,"
        " schema_revision, recovery_password_set_at, home_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            item.backup_id,
            item.kind,
            "complete",
            str(item.path),
            db_time(item.created_at),
            item.size_bytes,
            item.fingerprint,
            item.schema_revision,
            db_time(item.recovery_password_set_at) if item.recovery_password_set_at else None,
            item.home_id,
        ),
    )


def scan_folders(instance: Instance) -> list[Path]:
    """Where this instance's backups may be: its backups/, the schedule's destination (even
    a paused one) and every folder the catalog names."""
    from sqlalchemy import select

    from ams.db.models.backups import BackupRecord, BackupSchedule

    with instance.session() as session:
        row = session.get(BackupSchedule, 1)
        paths = [p for p in session.scalars(select(BackupRecord.path)) if p]
        return _folders(instance.home, row.destination if row is not None else None, paths)


def _folders(home: Home, destination: str | None, paths: list[str]) -> list[Path]:
    folders = [home.backups_dir, *([Path(destination)] if destination else [])]
    folders += [Path(p).parent for p in paths]
    unique: dict[str, Path] = {}
    for folder in folders:
        unique.setdefault(os.path.abspath(folder), Path(os.path.abspath(folder)))
    return list(unique.values())


def _read_header(path: Path, instance_id: str, master_key: bytes | None) -> _Found | None:
    """The backup a file holds, proven by its header; None when it is not one of this
    instance's backups. :class:`AMSError` when it claims to be one and does not verify."""
    from ams.backup.archive import ArchiveReader

    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        if manifest.instance_id != instance_id:
            return None
        reader.check_manifest_sum()
        if master_key is not None:
            reader.check_seal(master_key)
        set_at = manifest.recovery_password_set_at
        home_id = manifest.data.get("home_id")
        return _Found(
            path=path,
            backup_id=manifest.backup_id,
            kind=manifest.kind,
            created_at=as_utc(manifest.created_at),
            size_bytes=path.stat().st_size,
            fingerprint=manifest.fingerprint,
            schema_revision=manifest.schema_revision,
            recovery_password_set_at=as_utc(datetime.fromisoformat(set_at)) if set_at else None,
            home_id=home_id if isinstance(home_id, str) else None,
        )


def _scan(folder: Path, instance_id: str, master_key: bytes | None, result: RescanResult) -> list[_Found]:
    found: list[_Found] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for path in entries:
        if path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        try:
            item = _read_header(path, instance_id, master_key)
        except (AMSError, OSError, ValueError, KeyError, TypeError):
            if path.name.endswith(".amsbak"):
                result.unreadable.append(str(path))
            continue
        if item is not None:
            found.append(item)
    return found


def _survey(
    folders: list[Path],
    own: set[Path],
    instance_id: str,
    master_key: bytes | None,
    result: RescanResult,
) -> tuple[dict[str, _Found], set[str]]:
    """Every archive of this instance in ``folders`` by backup id, and the folders that are
    there; leftovers of crashed backups are removed on the way, in this home's ``own``
    folders only (the others may be another home's)."""
    found: dict[str, _Found] = {}
    present: set[str] = set()
    mine = {os.path.abspath(f) for f in own}
    for folder in folders:
        if not folder.is_dir():
            continue
        present.add(str(folder))
        result.folders.append(str(folder))
        if str(folder) in mine:
            result.leftovers_removed += [str(folder / n) for n in leftovers.clean(folder)]
        for item in _scan(folder, instance_id, master_key, result):
            found.setdefault(item.backup_id, item)
    return found, present


def _plan(
    rows: dict[str, str | None], found: dict[str, _Found], present: set[str], result: RescanResult
) -> tuple[dict[str, str], list[_Found]]:
    """From the complete rows (id: path): ({id: new path}, the archives to add); fills
    ``result`` (the ids it lists under ``removed`` are the rows to delete)."""
    moves: dict[str, str] = {}
    for backup_id, path in rows.items():
        if path and Path(path).is_file():
            continue
        item = found.get(backup_id)
        if item is not None:
            moves[backup_id] = str(item.path)
            result.moved.append(backup_id)
        elif path and os.path.abspath(Path(path).parent) in present:
            result.removed.append(backup_id)  # its folder is there, the file is gone
    adds = [item for backup_id, item in found.items() if backup_id not in rows]
    result.added += [item.backup_id for item in adds]
    return moves, adds


def rescan(
    instance: Instance, *, actor: str, event: bool = True, restore_id: str | None = None
) -> RescanResult:
    """Reconcile the catalog with what :func:`scan_folders` hold, by their headers.

    Adds every archive of this instance that the catalog lacks (recording the home that
    wrote it, from its manifest), follows an archive that moved, and drops the rows of
    archives whose folder is there but whose file is not (an unreachable folder changes
    nothing). Leftovers of crashed backups in those folders are removed
    (:mod:`ams.backup.leftovers`). With ``event``, audited (1507).
    """
    from sqlalchemy import select

    from ams import audit
    from ams.db.models.backups import BackupRecord

    result = RescanResult()
    master_key: bytes | None = None
    with contextlib.suppress(AMSError):
        master_key = instance.keyring.master_key()
    own = {instance.home.backups_dir, default_destination(instance)}
    found, present = _survey(scan_folders(instance), own, instance.id, master_key, result)
    with instance.transaction() as session:
        rows = {
            r.id: r for r in session.scalars(select(BackupRecord).where(BackupRecord.status == "complete"))
        }
        moves, adds = _plan({k: r.path for k, r in rows.items()}, found, present, result)
        for backup_id, path in moves.items():
            rows[backup_id].path = path
        for backup_id in result.removed:
            session.delete(rows[backup_id])
        for item in adds:
            session.add(_record_of(item))
        if event:
            details: dict[str, Any] = result.to_dict()
            if restore_id:
                details["restore_id"] = restore_id
            audit.record(
                session, instance.clock, audit.Event.BACKUP_CATALOG_RESCANNED, actor=actor, details=details
            )
    return result


def rescan_sqlite(
    conn: sqlite3.Connection, home: Home, instance_id: str, master_key: bytes | None
) -> RescanResult:
    """:func:`rescan` on a plain sqlite3 connection (a restore's staged database, before it
    is swapped in), inside the caller's transaction; the caller records the event."""
    row = conn.execute("SELECT destination FROM backup_schedule WHERE id = 1").fetchone()
    rows = dict(conn.execute("SELECT id, path FROM backups WHERE status = 'complete'").fetchall())
    paths = [p for p in rows.values() if p]
    result = RescanResult()
    folders = _folders(home, row[0] if row else None, paths)
    found, present = _survey(folders, {home.backups_dir}, instance_id, master_key, result)
    moves, adds = _plan(rows, found, present, result)
    for backup_id, path in moves.items():
        conn.execute("UPDATE backups SET path = ? WHERE id = ?", (path, backup_id))
    for backup_id in result.removed:
        conn.execute("DELETE FROM backups WHERE id = ?", (backup_id,))
    for item in adds:
        _insert_sqlite(conn, item)
    return result


# -- archives a crashed backup wrote but did not record (issue 13) ---------------------------


def unrecorded(
    folder: Path, listed: set[str], ids: set[str], instance_id: str, master_key: bytes | None, skip: Path
) -> list[_Found]:
    """Complete archives of this instance in ``folder`` that the catalog lacks: a backup
    killed after renaming its archive into place and before recording it leaves one."""
    found: list[_Found] = []
    for path in sorted(folder.glob("*.amsbak")):
        if path.name.startswith(".") or path == skip or str(path) in listed:
            continue
        try:
            item = _read_header(path, instance_id, master_key)
        except (AMSError, OSError):
            continue  # not a good archive of ours: `backup list --rescan` names it
        if item is not None and item.backup_id not in ids:
            found.append(item)
    return found


def adopt(session: Session, result: MadeBackup, master_key: bytes | None) -> list[str]:
    """Record, beside a new backup, the complete archives a crashed one left unrecorded in
    the same folder (inside the caller's transaction); their ids."""
    from sqlalchemy import select

    from ams.db.models.backups import BackupRecord

    listed = {p for p in session.scalars(select(BackupRecord.path)) if p}
    ids = set(session.scalars(select(BackupRecord.id)))
    items = unrecorded(result.path.parent, listed, ids, _instance_of(result), master_key, result.path)
    for item in items:
        session.add(_record_of(item))
    return [i.backup_id for i in items]


def adopt_sqlite(conn: sqlite3.Connection, result: MadeBackup, master_key: bytes | None) -> list[str]:
    """:func:`adopt` on a plain sqlite3 connection, inside the caller's transaction."""
    listed = {str(r[0]) for r in conn.execute("SELECT path FROM backups WHERE path IS NOT NULL")}
    ids = {str(r[0]) for r in conn.execute("SELECT id FROM backups")}
    items = unrecorded(result.path.parent, listed, ids, _instance_of(result), master_key, result.path)
    for item in items:
        _insert_sqlite(conn, item)
    return [i.backup_id for i in items]


def _instance_of(result: MadeBackup) -> str:
    return str(result.manifest["instance_id"])


def adopted_details(result: MadeBackup, added: list[str]) -> dict[str, Any]:
    """Event 1507's details when a new backup recorded archives a crashed one left."""
    return {
        "folders": [str(result.path.parent)],
        "added": added,
        "moved": [],
        "removed": [],
        "unreadable": [],
        "leftovers_removed": [],
        "by_backup": result.backup_id,
    }
