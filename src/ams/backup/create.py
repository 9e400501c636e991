"""``ams backup create``: an online, consistent, encrypted backup written as a stream.

The database is copied with SQLite's online backup API in one step, inside one read
transaction: on a WAL database writers keep writing meanwhile, and the copy is exactly the
database at one commit. The copy is then streamed (with the config folder and the snapshot
store) through the encrypted payload into the archive, under a temporary name that is
fsynced and renamed only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ams import __version__, audit
from ams.backup import catalog
from ams.backup.archive import FORMAT, FORMAT_VERSION, MANIFEST, ArchiveWriter
from ams.errors import BackupFailed, BackupUnsupported, NotWritable
from ams.home import ensure_private_dir, fsync_dir
from ams.instance import Instance

__all__ = ["BackupResult", "Progress", "create_backup", "database_facts"]

KINDS = ("manual", "scheduled", "pre-restore")
_COPY = 1 << 20

# (bytes done, bytes total, phase)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    path: Path
    kind: str
    created_at: datetime
    size_bytes: int
    duration_seconds: float
    fingerprint: str
    schema_revision: str
    recovery_password_set_at: str | None
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "path": str(self.path),
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "duration_seconds": round(self.duration_seconds, 3),
            "master_key_fingerprint": self.fingerprint,
            "schema_revision": self.schema_revision,
            "recovery_password_set_at": self.recovery_password_set_at,
            "counts": self.manifest.get("counts", {}),
        }


def _utc_text(value: str | None) -> str | None:
    """SQLite keeps naive UTC text; the manifest carries ISO 8601 with an offset."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def database_facts(db_path: Path) -> dict[str, Any]:
    """What the manifest says about a database copy, read from the copy itself."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        instance_id, fingerprint = conn.execute("SELECT id, master_key_fingerprint FROM instance").fetchone()
        row = conn.execute(
            "SELECT wrapping, created_at FROM master_key_wrappings WHERE kind='recovery'"
        ).fetchone()
        certificates: list[dict[str, Any]] = []
        if "certificates" in tables:
            columns = {r[1] for r in conn.execute('PRAGMA table_info("certificates")')}
            key_column = next(
                (c for c in ("private_key_sealed", "private_key", "key_sealed") if c in columns), None
            )
            select = ["thumbprint"]
            select += [c for c in ("scope", "state") if c in columns]
            if key_column:
                select.append(f"{key_column} IS NOT NULL")
            for values in conn.execute(f'SELECT {", ".join(select)} FROM "certificates" ORDER BY thumbprint'):  # noqa: S608
                item = dict(zip([c.split(" ")[0] for c in select], values, strict=True))
                item["has_private_key"] = bool(item.pop(key_column)) if key_column else None
                certificates.append(item)
    finally:
        conn.close()
    return {
        "schema_revision": revision,
        "instance_id": instance_id,
        "master_key_fingerprint": fingerprint,
        "recovery_wrapping": json.loads(row[0]) if row else None,
        "recovery_password_set_at": _utc_text(row[1]) if row else None,
        "certificates": certificates,
        "counts": counts,
    }


def snapshot_sqlite(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API, in one step.

    One step means one read transaction: the copy is one consistent commit, and (WAL)
    writers are never blocked by it. A multi-step backup would restart whenever another
    connection writes, and might never finish under steady writes.
    """
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _tree_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_dir() or p.is_file())


def _add_tree(inner: tarfile.TarFile, root: Path, arcroot: str, tick: Callable[[int], None]) -> int:
    """Regular files and folders only: links and special files are not backed up."""
    files = 0
    inner.addfile(_dir_info(arcroot))
    for path in _tree_files(root):
        if path.is_symlink():
            continue
        name = f"{arcroot}/{path.relative_to(root).as_posix()}"
        if path.is_dir():
            inner.addfile(_dir_info(name))
            continue
        _add_file(inner, path, name, tick)
        files += 1
    return files


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o700
    return info


def _add_file(inner: tarfile.TarFile, path: Path, name: str, tick: Callable[[int], None]) -> None:
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        info = tarfile.TarInfo(name)
        info.size = st.st_size
        info.mtime = int(st.st_mtime)
        info.mode = 0o700 if st.st_mode & 0o100 else 0o600
        inner.addfile(info, _Counting(handle, tick))


class _Counting:
    def __init__(self, handle: BinaryIO, tick: Callable[[int], None]) -> None:
        self.handle = handle
        self.tick = tick

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.tick(len(data))
        return data


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in _tree_files(root) if p.is_file() and not p.is_symlink())


def _failure(dest: Path, exc: BaseException) -> BackupFailed:
    if isinstance(exc, BackupFailed):
        return exc
    if isinstance(exc, NotWritable):
        return BackupFailed(f"{exc.message}; choose a writable --dest, nothing was left behind")
    if isinstance(exc, PermissionError):
        return BackupFailed(f"cannot write the backup in {dest}: permission denied; choose a writable --dest")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return BackupFailed(f"the destination {dest} is full: free some space or choose another --dest")
    if isinstance(exc, OSError):
        return BackupFailed(
            f"cannot write the backup in {dest}: {exc.strerror or exc}; check the destination"
        )
    if isinstance(exc, sqlite3.Error):
        return BackupFailed(f"the database could not be copied ({exc}); check the instance with `ams status`")
    return BackupFailed(f"the backup failed ({exc}); nothing was left behind")


def create_backup(
    instance: Instance,
    *,
    dest: Path | None = None,
    kind: str = "manual",
    actor: str,
    progress: Progress | None = None,
    record: bool = True,
) -> BackupResult:
    """Write one ``.amsbak`` archive; with ``record``, add a catalog row and an audit event."""
    if kind not in KINDS:
        raise ValueError(kind)
    if instance.engine_name != "sqlite":
        raise BackupUnsupported(
            "backups of a PostgreSQL instance are not yet supported by `ams backup`: back the "
            "database up with pg_dump, and the config folder with a file backup"
        )
    master_key = instance.keyring.master_key()  # MasterKeyLocked before anything is written
    set_at = instance.keyring.recovery_password_set_at()
    target_dir = (dest or catalog.default_destination(instance)).expanduser().absolute()
    started = time.monotonic()
    created_at = instance.clock.now()
    backup_id = "bk_" + secrets.token_hex(8)
    name = f"ams-{created_at:%Y%m%dT%H%M%SZ}-{kind}-{backup_id[3:]}.amsbak"
    final = target_dir / name
    scratch: Path | None = None
    tmp_file: Path | None = None
    try:
        if not target_dir.exists():
            ensure_private_dir(target_dir)
        if not target_dir.is_dir():
            raise BackupFailed(f"the destination {target_dir} is not a folder: choose a folder with --dest")
        if not os.access(target_dir, os.W_OK | os.X_OK):
            raise BackupFailed(
                f"cannot write the backup in {target_dir}: permission denied; choose a writable --dest"
            )
        scratch = Path(tempfile.mkdtemp(prefix=f".{backup_id}.", suffix=".work", dir=target_dir))
        db_copy = scratch / "ams.db"
        if progress:
            progress(0, 0, "copying the database")
        snapshot_sqlite(instance.home.sqlite_path, db_copy)
        facts = database_facts(db_copy)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backup_id": backup_id,
            "ams_version": __version__,
            "created_at": created_at.isoformat(),
            "kind": kind,
            "backend": "sqlite",
            "payload": {
                "member": "payload.enc",
                "encryption": "AES-256-GCM, chunked (see docs/formats.md)",
                "contents": ["database/ams.db", "config/", "snapshots/"],
            },
            **facts,
        }
        if manifest["recovery_password_set_at"] is None and set_at is not None:
            manifest["recovery_password_set_at"] = set_at.isoformat()
        total = (
            db_copy.stat().st_size
            + _tree_size(instance.home.config_dir)
            + _tree_size(instance.home.snapshots_dir)
        )
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total, "encrypting")

        def produce(sink: BinaryIO) -> None:
            with tarfile.open(
                fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_COPY, copybufsize=_COPY
            ) as inner:
                inner.addfile(_dir_info("database"))
                _add_file(inner, db_copy, "database/ams.db", tick)
                _add_tree(inner, instance.home.config_dir, "config", tick)
                _add_tree(inner, instance.home.snapshots_dir, "snapshots", tick)

        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target_dir)
        tmp_file = Path(tmp_name)
        with os.fdopen(fd, "w+b") as handle:
            os.fchmod(handle.fileno(), 0o600)
            writer = ArchiveWriter(handle, int(created_at.timestamp()))
            writer.add_bytes(
                MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
            )
            writer.write_payload(master_key, produce)
            writer.finish(master_key, manifest["master_key_fingerprint"])
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(tmp_file, final)
        tmp_file = None
        fsync_dir(target_dir)
    except NotWritable as exc:
        raise _failure(target_dir, exc) from None
    except (OSError, sqlite3.Error, tarfile.TarError) as exc:
        raise _failure(target_dir, exc) from exc
    finally:
        if tmp_file is not None:
            with contextlib.suppress(OSError):
                tmp_file.unlink()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result = BackupResult(
        backup_id=backup_id,
        path=final,
        kind=kind,
        created_at=created_at,
        size_bytes=size,
        duration_seconds=time.monotonic() - started,
        fingerprint=manifest["master_key_fingerprint"],
        schema_revision=manifest["schema_revision"],
        recovery_password_set_at=manifest["recovery_password_set_at"],
        manifest=manifest,
    )
    if record:
        with instance.transaction() as session:
            catalog.add_complete(session, result)
            audit.record(
                session,
                instance.clock,
                audit.Event.BACKUP_CREATED,
                actor=actor,
                target=backup_id,
                details=catalog.created_details(result),
            )
    return result
