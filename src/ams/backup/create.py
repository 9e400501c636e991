"""``ams backup create``: an online, consistent, encrypted backup written as a stream.

The database is read in one pass as it stands in one read transaction
(:mod:`ams.backup.sqlite_image`): on a WAL database writers keep writing meanwhile, and the
image is exactly the database at one commit. The manifest's counts are read in that same
transaction. The image, the config folder and the snapshot store go through the encrypted
payload into the archive, under a temporary name that is fsynced and renamed only once
complete.

A backup reads from and records itself in a :class:`BackupSource`: an open instance (the
service's scheduled and API backups, PostgreSQL, a pre-restore backup), or for the
``ams backup create`` command on the embedded database the home itself
(:class:`ams.backup.embedded.EmbeddedSource`, plain :mod:`sqlite3`), so that the command
does not spend half a second loading SQLAlchemy before a copy that takes a few seconds.
This module, like catalog and audit, imports no database layer at the top for that reason.
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from ams import __version__, audit
from ams.backup import catalog, leftovers
from ams.backup.archive import FORMAT, FORMAT_VERSION, MANIFEST, ArchiveWriter, archive_mtime
from ams.backup.sqlite_image import (
    DatabaseImage,
    ImageUnavailable,
    database_facts,
    open_image,
)
from ams.errors import BackupFailed, NotWritable
from ams.home import Home, ensure_private_dir, fsync_dir

if TYPE_CHECKING:
    from ams.clock import Clock
    from ams.instance import Instance

__all__ = [
    "BackupResult",
    "BackupSource",
    "Progress",
    "create_backup",
    "create_backup_at",
    "database_facts",
    "write_backup",
]

KINDS = ("manual", "scheduled", "pre-restore")
_COPY = 1 << 20

_Write = Callable[[bytes | bytearray], None]

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
    home_id: str | None = None  # the home that wrote it (manifest "home_id")
    offsite: tuple[dict[str, Any], ...] | None = None  # the copies to offsite targets, when any

    def to_dict(self) -> dict[str, Any]:
        extra = {"offsite": list(self.offsite)} if self.offsite is not None else {}
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
            "home_id": self.home_id,
            "counts": self.manifest.get("counts", {}),
            **extra,
        }


def _tree_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_dir() or p.is_file())


class _TarOut:
    """The inner tar (POSIX pax), written straight into the encrypted payload.

    :mod:`tarfile` only formats the headers: file data goes through as it is read, so the
    database image is copied once, from its pages into the encryption.
    """

    def __init__(self, sink: BinaryIO, tick: Callable[[int], None]) -> None:
        self.sink = sink
        self.tick = tick

    def _header(self, info: tarfile.TarInfo) -> None:
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def folder(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o700
        self._header(info)

    def stream(self, name: str, size: int, mtime: int, mode: int, fill: Callable[[_Write], None]) -> None:
        """A regular file of exactly ``size`` bytes, written by ``fill(write)``."""
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = mtime
        info.mode = mode
        self._header(info)
        written = 0

        def write(data: bytes | bytearray) -> None:
            nonlocal written
            written += len(data)
            if written > size:
                raise BackupFailed(f"{name} grew while it was being backed up; run the backup again")
            self.sink.write(data)
            self.tick(len(data))

        fill(write)
        if written != size:
            raise BackupFailed(f"{name} shrank while it was being backed up; run the backup again")
        if size % tarfile.BLOCKSIZE:
            self.sink.write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def file(self, path: Path, name: str) -> None:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())

            def fill(write: _Write) -> None:
                left = st.st_size
                while left and (data := handle.read(min(_COPY, left))):
                    write(data)
                    left -= len(data)

            self.stream(name, st.st_size, int(st.st_mtime), 0o700 if st.st_mode & 0o100 else 0o600, fill)

    def tree(self, root: Path, arcroot: str) -> None:
        """Regular files and folders only: links and special files are not backed up."""
        self.folder(arcroot)
        for path in _tree_files(root):
            if path.is_symlink():
                continue
            name = f"{arcroot}/{path.relative_to(root).as_posix()}"
            if path.is_dir():
                self.folder(name)
            else:
                self.file(path, name)

    def close(self) -> None:
        self.sink.write(bytes(2 * tarfile.BLOCKSIZE))


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


class BackupSource(Protocol):
    """Where a backup reads the instance from, and where it records itself."""

    home: Home
    clock: Clock
    engine_name: str

    def master_key(self) -> bytes: ...

    def recovery_password_set_at(self) -> datetime | None: ...

    def default_destination(self) -> Path: ...

    def open_image(self, scratch: Path) -> AbstractContextManager[DatabaseImage]: ...

    def record(self, result: BackupResult, actor: str) -> None:
        """Add the catalog row and the audit event, in one transaction."""


class _InstanceSource:
    """An open instance: SQLite or PostgreSQL, through the ORM."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.home = instance.home
        self.clock = instance.clock
        self.engine_name = instance.engine_name

    def master_key(self) -> bytes:
        return self.instance.keyring.master_key()

    def recovery_password_set_at(self) -> datetime | None:
        return self.instance.keyring.recovery_password_set_at()

    def default_destination(self) -> Path:
        return catalog.default_destination(self.instance)

    @contextlib.contextmanager
    def open_image(self, scratch: Path) -> Iterator[DatabaseImage]:
        if self.engine_name != "postgresql":
            with open_image(self.home.sqlite_path, scratch) as image:
                yield image
            return
        from sqlalchemy.exc import SQLAlchemyError

        from ams.backup.pg import open_pg_image

        try:
            with open_pg_image(self.instance.engine, scratch) as image:
                yield image
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise BackupFailed(
                f"the database could not be read ({reason}); check it with `ams status`, "
                "nothing was left behind"
            ) from None

    def record(self, result: BackupResult, actor: str) -> None:
        with self.instance.transaction() as session:
            catalog.add_complete(session, result)
            audit.record(
                session,
                self.clock,
                audit.Event.BACKUP_CREATED,
                actor=actor,
                target=result.backup_id,
                details=catalog.created_details(result),
            )
            adopted = catalog.adopt(session, result, self.master_key())
            if adopted:
                audit.record(
                    session,
                    self.clock,
                    audit.Event.BACKUP_CATALOG_RESCANNED,
                    actor=actor,
                    details=catalog.adopted_details(result, adopted),
                )


def create_backup(
    instance: Instance,
    *,
    dest: Path | None = None,
    kind: str = "manual",
    actor: str,
    progress: Progress | None = None,
    record: bool = True,
) -> BackupResult:
    """Write one ``.amsbak`` archive; with ``record``, add a catalog row and an audit event.

    A recorded manual backup is then verified and copied to the offsite targets, when there
    are any (ams.backup.offsite; a failed copy is recorded, never raised).
    """
    result = write_backup(
        _InstanceSource(instance), dest=dest, kind=kind, actor=actor, progress=progress, record=record
    )
    if kind == "manual" and record:
        result = _copy_offsite(instance, result, actor, progress)
    return result


def _copy_offsite(
    instance: Instance, result: BackupResult, actor: str, progress: Progress | None
) -> BackupResult:
    from dataclasses import replace

    from ams.backup import offsite, targets

    if not targets.list_targets(instance):
        return result
    if progress:
        progress(0, 0, "copying offsite")
    copies = offsite.copy_new_backup(instance, result.backup_id, actor=actor)
    return replace(result, offsite=tuple(c.to_dict() for c in copies))


def create_backup_at(
    home: Home, *, dest: Path | None = None, actor: str, progress: Progress | None = None
) -> BackupResult:
    """``ams backup create``: a manual backup of the instance at ``home``.

    On the embedded database, read and recorded with plain sqlite3 when the home is as
    :func:`ams.instance.open_instance` would accept it; otherwise (PostgreSQL, or anything
    out of the ordinary) through the opened instance, which also names what is wrong.
    """
    from ams.backup.embedded import EmbeddedSource

    embedded = EmbeddedSource.open(home)
    if embedded is not None:
        with embedded:
            result = write_backup(embedded, dest=dest, actor=actor, progress=progress)
        if not _has_offsite_targets(home.sqlite_path):
            return result
        from ams.instance import open_instance

        instance = open_instance(home)
        try:
            return _copy_offsite(instance, result, actor, progress)
        finally:
            instance.close()
    from ams.instance import open_instance

    instance = open_instance(home)
    try:
        return create_backup(instance, dest=dest, actor=actor, progress=progress)
    finally:
        instance.close()


def _has_offsite_targets(db_path: Path) -> bool:
    """Whether any offsite target is set, read with plain sqlite3 (the ORM only when so)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM offsite_targets LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def write_backup(
    source: BackupSource,
    *,
    dest: Path | None = None,
    kind: str = "manual",
    actor: str,
    progress: Progress | None = None,
    record: bool = True,
) -> BackupResult:
    """The work of :func:`create_backup`, for any :class:`BackupSource`."""
    if kind not in KINDS:
        raise ValueError(kind)
    master_key = source.master_key()  # MasterKeyLocked before anything is written
    set_at = source.recovery_password_set_at()
    target_dir = (dest or source.default_destination()).expanduser().absolute()
    started = time.monotonic()
    created_at = source.clock.now()
    backup_id = "bk_" + secrets.token_hex(8)
    name = f"ams-{created_at:%Y%m%dT%H%M%SZ}-{kind}-{backup_id[3:]}.amsbak"
    final = target_dir / name
    scratch: Path | None = None
    tmp_file: Path | None = None
    held: list[int] = []  # flocks on the scratch folder and the temporary file (ams.backup.leftovers)
    try:
        if not target_dir.exists():
            ensure_private_dir(target_dir)
        if not target_dir.is_dir():
            raise BackupFailed(f"the destination {target_dir} is not a folder: choose a folder with --dest")
        if not os.access(target_dir, os.W_OK | os.X_OK):
            raise BackupFailed(
                f"cannot write the backup in {target_dir}: permission denied; choose a writable --dest"
            )
        leftovers.clean(target_dir)  # what a crashed backup or restore left here
        salt = secrets.token_bytes(16)  # the payload key's salt, recorded in the manifest
        scratch = Path(tempfile.mkdtemp(prefix=f".{backup_id}.", suffix=".work", dir=target_dir))
        held.append(leftovers.hold(scratch))
        if progress:
            progress(0, 0, "reading the database")
        home = source.home
        with source.open_image(scratch) as image:
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "backup_id": backup_id,
                "ams_version": __version__,
                "created_at": created_at.isoformat(),
                "kind": kind,
                "backend": source.engine_name,
                "payload": {
                    "member": "payload.enc",
                    "encryption": "AES-256-GCM, chunked (see docs/formats.md)",
                    "salt": salt.hex(),
                    "contents": ["database/ams.db", "config/", "snapshots/"],
                },
                **image.facts,
            }
            if manifest["recovery_password_set_at"] is None and set_at is not None:
                manifest["recovery_password_set_at"] = set_at.isoformat()
            total = image.size + _tree_size(home.config_dir) + _tree_size(home.snapshots_dir)
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total, "encrypting")

            def produce(sink: BinaryIO) -> None:
                inner = _TarOut(sink, tick)
                inner.folder("database")
                inner.stream("database/ams.db", image.size, int(created_at.timestamp()), 0o600, image.copy)
                inner.tree(home.config_dir, "config")
                inner.tree(home.snapshots_dir, "snapshots")
                inner.close()

            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target_dir)
            tmp_file = Path(tmp_name)
            with os.fdopen(fd, "w+b") as handle:
                leftovers.hold(tmp_file, handle.fileno())  # released when the handle closes
                os.fchmod(handle.fileno(), 0o600)
                writer = ArchiveWriter(handle, archive_mtime(created_at))
                writer.add_bytes(
                    MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
                )
                writer.write_payload(master_key, produce, salt)
                writer.finish(master_key, manifest["master_key_fingerprint"])
                handle.flush()
                os.fsync(handle.fileno())
                size = handle.tell()
        os.replace(tmp_file, final)
        tmp_file = None
        fsync_dir(target_dir)
    except NotWritable as exc:
        raise _failure(target_dir, exc) from None
    except ImageUnavailable as exc:
        raise BackupFailed(
            f"the database could not be read consistently ({exc}); run the backup again"
        ) from None
    except (OSError, sqlite3.Error, tarfile.TarError) as exc:
        raise _failure(target_dir, exc) from exc
    finally:
        if tmp_file is not None:
            with contextlib.suppress(OSError):
                tmp_file.unlink()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        for fd in held:
            os.close(fd)
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
        home_id=manifest.get("home_id"),
    )
    if record:
        source.record(result, actor)
    return result
