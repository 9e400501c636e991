"""Snapshots of a directory: take, list, delete, restore (queued), limits, automatic ones.

A snapshot is the directory's entries at one point in time, read in ONE read transaction
(a consistent read, whatever writers do meanwhile) and streamed into a checksummed file in
the snapshot store (:mod:`ams.directory.snapfile`). Manual snapshots are limited to
:data:`MANUAL_LIMIT` per directory; automatic ones (``ams serve``, daily) are kept apart,
the newest :data:`AUTO_KEEP` of them.

``restore`` only checks and queues: the directory turns ``Restoring`` and the restore
worker (:mod:`ams.directory.restore`) does the work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ams import audit
from ams.clock import as_utc
from ams.db.models.directory import Directory, DirectoryRestore, Snapshot
from ams.directory import directories, snapfile
from ams.directory.directories import DirectoryInfo, snapshot_path
from ams.errors import (
    BadInput,
    Conflict,
    DirectoryUnavailable,
    NotFound,
    NotPrimaryRegion,
    SnapshotCorrupt,
    SnapshotLimitExceeded,
    SnapshotNotFound,
    SnapshotStoreFailed,
    SnapshotTooOld,
    UnsupportedOperation,
)
from ams.instance import Instance
from ams.textcheck import check_name

__all__ = [
    "AUTO_INTERVAL",
    "AUTO_KEEP",
    "MANUAL_LIMIT",
    "MAX_RESTORE_AGE",
    "SCRUB_INTERVAL",
    "SnapshotInfo",
    "SnapshotLimits",
    "create",
    "create_auto",
    "delete",
    "limits",
    "list_snapshots",
    "resolve_interrupted",
    "restore",
    "run_auto_snapshots",
    "scrub",
    "snapshot_path",
    "verify",
]

T = TypeVar("T")

MANUAL_LIMIT = 5
AUTO_KEEP = 5
AUTO_INTERVAL = timedelta(days=1)
MAX_RESTORE_AGE = timedelta(days=180)
SCRUB_INTERVAL = timedelta(days=1)
_NAME_MAX = 128


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    directory_id: str
    type: str  # Manual | Auto
    name: str | None
    status: str  # Creating | Completed | Failed
    start_time: datetime
    checksum_ok: bool | None  # None while Creating or Failed (no file to check)
    completed_at: datetime | None = None
    size: int | None = None
    entries: int | None = None
    sha256: str | None = None
    failure_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "directory_id": self.directory_id,
            "type": self.type,
            "name": self.name,
            "status": self.status,
            "start_time": self.start_time.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "checksum_ok": self.checksum_ok,
            "size": self.size,
            "entries": self.entries,
            "sha256": self.sha256,
            "failure_reason": self.failure_reason,
        }


@dataclass(frozen=True)
class SnapshotLimits:
    manual_limit: int
    manual_count: int
    manual_limit_reached: bool
    # False for an AD Connector: the limit means nothing there, every snapshot is refused.
    snapshots_supported: bool = True
    unsupported_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "manual_limit": self.manual_limit,
            "manual_count": self.manual_count,
            "manual_limit_reached": self.manual_limit_reached,
            "snapshots_supported": self.snapshots_supported,
            "unsupported_reason": self.unsupported_reason,
        }


# Full checks (the whole file read) in this process: the answer, while the file stays as
# it was; and when the scrub last checked each snapshot.
_verified: dict[tuple[str, int, int, int, str], bool] = {}
_scrubbed: dict[str, datetime] = {}


def _file_key(path: Path, row: Snapshot) -> tuple[str, int, int, int, str] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns, row.sha256 or "")


def _full_check(row: Snapshot, path: Path, key: tuple[str, int, int, int, str]) -> bool:
    try:
        snapfile.verify(path, row.sha256)
    except SnapshotCorrupt:
        _verified[key] = False
        return False
    _verified[key] = True
    if row.completed_at is not None:
        snapfile.stamp(path, row.completed_at)  # the quick check holds again
    return True


def _checksum_ok(instance: Instance, row: Snapshot) -> bool | None:
    """Does the snapshot's file pass its checksum? Without reading it when its size and
    modification time are still those it was written with (:func:`snapfile.unchanged`) and
    no full check in this process found it damaged; otherwise by reading it whole, once
    while it stays as it is. Whatever this says, the restore worker checks the whole file
    in the pass that loads it, and :func:`scrub` reads every file now and then."""
    if row.status != "Completed":
        return None
    path = snapshot_path(instance, row)
    key = _file_key(path, row)
    if key is None:
        return False
    if _verified.get(key) is False:
        return False
    if snapfile.unchanged(path, row.size, row.completed_at):
        return True
    if key not in _verified:
        _full_check(row, path, key)
    return _verified[key]


def _info(instance: Instance, row: Snapshot, *, check: bool = True) -> SnapshotInfo:
    return SnapshotInfo(
        id=row.id,
        directory_id=row.directory_id,
        type=row.type,
        name=row.name,
        status=row.status,
        start_time=row.start_time,
        checksum_ok=_checksum_ok(instance, row) if check else None,
        completed_at=row.completed_at,
        size=row.size,
        entries=row.entries,
        sha256=row.sha256,
        failure_reason=row.failure_reason,
    )


def _check_snapshot_id(snapshot_id: str) -> None:
    if (
        not isinstance(snapshot_id, str)
        or len(snapshot_id) != 12
        or not snapshot_id.startswith("s-")
        or any(c not in "0123456789abcdef" for c in snapshot_id[2:])
    ):
        raise SnapshotNotFound(
            f"{snapshot_id!r} is not a snapshot id (s- and 10 hex digits): list them with `ams snapshot list`"
        )


def _load(session: Session, snapshot_id: str) -> Snapshot:
    _check_snapshot_id(snapshot_id)
    row = session.get(Snapshot, snapshot_id)
    if row is None:
        raise SnapshotNotFound(f"no snapshot {snapshot_id}: list them with `ams snapshot list`")
    return row


def _check_region(directory: Directory, region: str | None) -> None:
    if region is not None and region != directory.region:
        raise NotPrimaryRegion(
            f"directory {directory.id}'s primary region is {directory.region}, not {region}: "
            f"send snapshot operations to {directory.region}"
        )


def _unsnapshottable_reason(directory: Directory) -> str | None:
    if directory.type == "ADConnector":
        return (
            f"directory {directory.id} is an AD Connector, which has no snapshots: "
            "snapshot the directory it connects to instead"
        )
    return None


def _check_snapshottable(directory: Directory) -> None:
    reason = _unsnapshottable_reason(directory)
    if reason is not None:
        raise UnsupportedOperation(reason)


_BLOCK_ENTRIES = 5000

# One block of the snapshot file, built by SQLite: each column with one aggregate over a
# range of ids (no work per entry in Python, and the GIL is released while SQLite builds
# it). The aggregates step over the same rows, so the columns line up; the index named
# makes that the order entries were added in (SQLite has no ORDER BY inside an aggregate
# before 3.44).
_SQLITE_ROWS = "FROM directory_objects INDEXED BY ix_directory_objects_generation WHERE directory_id = ? "
_SQLITE_BLOCK_END = f"SELECT id {_SQLITE_ROWS} AND generation = ? AND id > ? ORDER BY id LIMIT 1 OFFSET ?"
_SQLITE_BLOCK = (
    "SELECT count(*), CAST(json_group_array(dn) AS BLOB), CAST(json_group_array(dn_norm) AS BLOB), "
    "CAST(group_concat(object_classes, char(10)) AS BLOB), CAST(group_concat(attributes, char(10)) AS BLOB) "
    f"{_SQLITE_ROWS} AND generation = ? AND id > ? AND id <= ?"
)
_LAST_ID = 2**63 - 1
_POSTGRES_ROWS = (
    "SELECT o.dn, o.dn_norm, o.object_classes, o.attributes "
    "FROM directory_objects o JOIN directories d "
    "ON d.id = o.directory_id AND d.generation = o.generation "
    "WHERE o.directory_id = %s ORDER BY o.id"
)


def _consistent_blocks(instance: Instance, directory_id: str) -> Iterator[snapfile.Block]:
    """The live entries of the directory as snapshot blocks, read at one point in time
    whatever writers do meanwhile: on SQLite by one read transaction (WAL gives it one
    snapshot of the database from its first read to its end), on PostgreSQL by one
    statement through a server-side cursor."""
    with instance.engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        if conn.dialect.name != "sqlite":
            cursor = dbapi.cursor(name=f"snapshot_{directory_id.replace('-', '_')}")  # server-side: streams
            try:
                cursor.execute(_POSTGRES_ROWS, (directory_id,))
                while rows := cursor.fetchmany(_BLOCK_ENTRIES):
                    yield snapfile.encode_block(rows)
            finally:
                cursor.close()
            return
        # Read the database file through a memory map: no copy through read() calls.
        dbapi.execute("PRAGMA mmap_size=1073741824")
        cursor = dbapi.cursor()
        try:
            cursor.execute("BEGIN")
            found = cursor.execute(
                "SELECT generation FROM directories WHERE id = ?", (directory_id,)
            ).fetchone()
            if found is None:
                return
            generation, last = found[0], -1
            while last < _LAST_ID:
                # The block's last id: an index-only step over the next _BLOCK_ENTRIES ids.
                end = cursor.execute(
                    _SQLITE_BLOCK_END, (directory_id, generation, last, _BLOCK_ENTRIES - 1)
                ).fetchone()
                upto = _LAST_ID if end is None else end[0]
                entries, dns, norms, classes, attributes = cursor.execute(
                    _SQLITE_BLOCK, (directory_id, generation, last, upto)
                ).fetchone()
                if entries:
                    yield snapfile.Block(entries, dns, norms, classes, attributes)
                last = upto
        finally:
            cursor.close()
            dbapi.rollback()  # the read transaction: it changed nothing


def prefetched(chunks: Iterator[T], depth: int = 8) -> Iterator[T]:
    """Run ``chunks`` in a thread, a few chunks ahead: the database reads the next rows
    (SQLite releases the GIL while it steps) while this thread hashes and writes."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        handoff.put(("chunk", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            handoff.put(("error", exc))
        finally:
            chunks.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=produce, name="ams-snapshot-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "chunk":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.1)
        thread.join()


def _take(
    instance: Instance,
    directory_id: str,
    *,
    kind: str,
    name: str | None,
    region: str | None,
    actor: str,
) -> SnapshotInfo:
    """Take a snapshot while holding its lock (see :func:`resolve_interrupted`)."""
    snapshot_id = directories.new_id("s")
    lock = _lock_path(instance, directory_id, snapshot_id)
    try:
        with _taking(lock):
            return _take_locked(
                instance, directory_id, snapshot_id, kind=kind, name=name, region=region, actor=actor
            )
    except OSError as exc:
        raise _store_failed(lock.parent, exc) from exc


def _store_failed(folder: Path, exc: OSError) -> SnapshotStoreFailed:
    """One line for a snapshot file the disk would not take (its row says Failed already)."""
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
    elif isinstance(exc, PermissionError):
        why = "permission denied"
    else:
        why = exc.strerror or type(exc).__name__
    return SnapshotStoreFailed(
        f"cannot write the snapshot in {folder}: {why}; nothing was kept: free space (or make it "
        "writable), then take the snapshot again"
    )


def _lock_path(instance: Instance, directory_id: str, snapshot_id: str) -> Path:
    return instance.home.snapshots_dir / directory_id / f".{snapshot_id}.lock"


@contextlib.contextmanager
def _taking(lock: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the snapshot's lock file while it is taken: the kernel
    releases it when the process dies, which is how a row left ``Creating`` is told apart
    from one still being written."""
    directories.check_directory_id(lock.parent.name)
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break  # the path still names the file we locked
        except FileNotFoundError:
            pass
        os.close(fd)  # a cleaner removed it between our open and our lock: again
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
        with contextlib.suppress(OSError):
            lock.parent.rmdir()  # only when empty (a snapshot refused before its first file)


def _held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


INTERRUPTED = "interrupted: the process taking it stopped before it completed; delete it and take another"


def resolve_interrupted(instance: Instance, actor: str = "service") -> list[str]:
    """Snapshots left ``Creating`` by a process that died (nothing holds their lock) become
    ``Failed``, their partial files removed (event 1611), so none is listed as in progress
    for ever or counts against the manual limit. Returns their ids."""
    with instance.session() as session:
        rows = [
            (r.id, r.directory_id)
            for r in session.scalars(select(Snapshot).where(Snapshot.status == "Creating"))
        ]
    # Locks of takers that died before their row was written, or after it was completed.
    creating = {snapshot_id for snapshot_id, _d in rows}
    for lock in instance.home.snapshots_dir.glob("d-*/.s-*.lock"):
        if lock.name[1:-5] not in creating and not _held(lock):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    failed: list[str] = []
    for snapshot_id, directory_id in rows:
        lock = _lock_path(instance, directory_id, snapshot_id)
        if _held(lock):
            continue  # still being taken
        with instance.transaction() as session:
            row = session.get(Snapshot, snapshot_id)
            if row is None or row.status != "Creating":
                continue
            row.status = "Failed"
            row.failure_reason = INTERRUPTED
            row.completed_at = instance.clock.now()
            audit.record(
                session,
                instance.clock,
                audit.Event.SNAPSHOT_FAILED,
                actor=actor,
                target=snapshot_id,
                outcome="failure",
                details={"directory": directory_id, "reason": INTERRUPTED},
            )
        folder = instance.home.snapshots_dir / directory_id
        for partial in [folder / f"{snapshot_id}.snap", *folder.glob(f".{snapshot_id}.snap.*"), lock]:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        failed.append(snapshot_id)
    return failed


def _take_locked(
    instance: Instance,
    directory_id: str,
    snapshot_id: str,
    *,
    kind: str,
    name: str | None,
    region: str | None,
    actor: str,
) -> SnapshotInfo:
    if name is not None:
        name = check_name(name, "the snapshot name").strip() or None
    if name is not None and (len(name) > _NAME_MAX or any(ord(c) < 32 for c in name)):
        raise BadInput(f"the snapshot name is longer than {_NAME_MAX} characters or holds control characters")
    now = instance.clock.now()
    relative = f"{directory_id}/{snapshot_id}.snap"
    with instance.transaction() as session:
        directory = directories.load(session, directory_id, for_update=True)
        _check_region(directory, region)
        _check_snapshottable(directory)
        directories.refuse_while_restoring(directory)
        if directory.stage not in ("Active", "RestoreFailed", "Impaired", "Updating"):
            raise Conflict(
                f"directory {directory_id} is {directory.stage}: snapshots need an Active directory"
            )
        # Insert first, count after: the insert takes the write lock, so two concurrent
        # requests cannot both see four and both make a fifth.
        session.add(
            Snapshot(
                id=snapshot_id,
                directory_id=directory_id,
                type=kind,
                name=name,
                status="Creating",
                start_time=now,
                file=relative,
            )
        )
        session.flush()
        if kind == "Manual":
            count = session.scalar(
                select(func.count())
                .select_from(Snapshot)
                .where(
                    Snapshot.directory_id == directory_id,
                    Snapshot.type == "Manual",
                    Snapshot.status != "Failed",
                )
            )
            if (count or 0) > MANUAL_LIMIT:
                raise SnapshotLimitExceeded(
                    f"directory {directory_id} has {MANUAL_LIMIT} manual snapshots, the limit: "
                    "delete one with `ams snapshot delete S` first",
                    directory_id=directory_id,
                    limit=MANUAL_LIMIT,
                )
        header = {
            "directory_id": directory_id,
            "dns_name": directory.dns_name,
            "snapshot_id": snapshot_id,
            "type": kind,
            "taken_at": now.isoformat(),
        }
    path = instance.home.snapshots_dir / relative
    try:
        written = snapfile.write(
            path, header, prefetched(_consistent_blocks(instance, directory_id)), now=instance.clock.now
        )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        with instance.transaction() as session:
            row = session.get(Snapshot, snapshot_id)
            if row is not None:
                row.status = "Failed"
                row.failure_reason = reason
                row.completed_at = instance.clock.now()
            audit.record(
                session,
                instance.clock,
                audit.Event.SNAPSHOT_FAILED,
                actor=actor,
                target=snapshot_id,
                outcome="failure",
                details={"directory": directory_id, "reason": reason},
            )
        raise
    with instance.transaction() as session:
        row = session.get(Snapshot, snapshot_id)
        if row is None:  # the directory was deleted meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise SnapshotNotFound(f"directory {directory_id} was deleted while its snapshot was taken")
        row.status = "Completed"
        row.completed_at = written.completed  # the file's modification time too
        row.size = written.size
        row.sha256 = written.sha256
        row.entries = written.entries
        audit.record(
            session,
            instance.clock,
            audit.Event.SNAPSHOT_CREATED,
            actor=actor,
            target=snapshot_id,
            details={
                "directory": directory_id,
                "type": kind,
                "entries": written.entries,
                "sha256": written.sha256,
            },
        )
        return dataclasses.replace(_info(instance, row, check=False), checksum_ok=True)


def create(
    instance: Instance,
    directory_id: str,
    *,
    name: str | None = None,
    region: str | None = None,
    actor: str,
) -> SnapshotInfo:
    """Take a manual snapshot (Creating → Completed before this returns)."""
    return _take(instance, directory_id, kind="Manual", name=name, region=region, actor=actor)


def create_auto(instance: Instance, directory_id: str, *, actor: str = "service") -> SnapshotInfo:
    """Take an automatic snapshot and prune the automatic ones beyond the newest :data:`AUTO_KEEP`."""
    taken = _take(instance, directory_id, kind="Auto", name=None, region=None, actor=actor)
    with instance.session() as session:
        autos = session.scalars(
            select(Snapshot)
            .where(Snapshot.directory_id == directory_id, Snapshot.type == "Auto")
            .order_by(Snapshot.start_time.desc(), Snapshot.id.desc())
        ).all()
        doomed = [s.id for s in autos[AUTO_KEEP:]]
    for snapshot_id in doomed:
        _delete(instance, snapshot_id, actor=actor, event=audit.Event.SNAPSHOT_AUTO_PRUNED)
    return taken


def run_auto_snapshots(instance: Instance) -> list[SnapshotInfo]:
    """One pass of the daily schedule: an Auto snapshot of every Active MicrosoftAD directory
    whose newest Auto snapshot is a day old or more (or that has none)."""
    now = instance.clock.now()
    with instance.session() as session:
        candidates = session.scalars(
            select(Directory.id).where(Directory.type == "MicrosoftAD", Directory.stage == "Active")
        ).all()
        due = []
        for directory_id in candidates:
            newest = session.scalar(
                select(func.max(Snapshot.start_time)).where(
                    Snapshot.directory_id == directory_id,
                    Snapshot.type == "Auto",
                    Snapshot.status == "Completed",
                )
            )
            if newest is None or now - as_utc(newest) >= AUTO_INTERVAL:
                due.append(directory_id)
    taken = []
    for directory_id in due:
        try:
            taken.append(create_auto(instance, directory_id))
        except (Conflict, NotFound, DirectoryUnavailable):
            continue  # restoring, deleted or changed meanwhile: the next pass tries again
    return taken


def list_snapshots(
    instance: Instance,
    directory_id: str | None = None,
    snapshot_ids: list[str] | None = None,
) -> list[SnapshotInfo]:
    """Snapshots, newest first, each with whether its file passes its checksum (a file
    unchanged since it was written or last verified is not read again)."""
    with instance.session() as session:
        query = select(Snapshot).order_by(Snapshot.start_time.desc(), Snapshot.id.desc())
        if directory_id is not None:
            directories.load(session, directory_id)
            query = query.where(Snapshot.directory_id == directory_id)
        if snapshot_ids is not None:
            for snapshot_id in snapshot_ids:
                _check_snapshot_id(snapshot_id)
            query = query.where(Snapshot.id.in_(snapshot_ids))
        rows = session.scalars(query).all()
        if snapshot_ids is not None:
            found = {r.id for r in rows}
            for snapshot_id in snapshot_ids:
                if snapshot_id not in found:
                    raise SnapshotNotFound(f"no snapshot {snapshot_id}: list them with `ams snapshot list`")
        return [_info(instance, r) for r in rows]


def get(instance: Instance, snapshot_id: str) -> SnapshotInfo:
    with instance.session() as session:
        return _info(instance, _load(session, snapshot_id))


def verify(instance: Instance, snapshot_id: str) -> SnapshotInfo:
    """Check the snapshot's file against its checksum now; SnapshotCorrupt when it fails."""
    with instance.session() as session:
        row = _load(session, snapshot_id)
        if row.status != "Completed":
            raise Conflict(f"snapshot {snapshot_id} is {row.status}: only Completed snapshots have a file")
        path = snapshot_path(instance, row)
        snapfile.verify(path, row.sha256)
        if row.completed_at is not None:
            snapfile.stamp(path, row.completed_at)
        return _info(instance, row)


def scrub(instance: Instance, *, limit: int = 1) -> list[SnapshotInfo]:
    """Read whole up to ``limit`` snapshot files that this process has not checked for
    :data:`SCRUB_INTERVAL` (the longest unchecked first), and return those that fail.

    Listing snapshots trusts a file whose size and time are as written; damage that leaves
    both alone (a failing disk) is found here. ``ams serve`` runs this every round of its
    directory jobs, so such a file shows as ``checksum_ok: false`` (and a restore from it
    is refused at the request) within about a day.
    """
    now = instance.clock.now()
    with instance.session() as session:
        rows = session.scalars(select(Snapshot).where(Snapshot.status == "Completed")).all()
    for gone in set(_scrubbed) - {r.id for r in rows}:
        del _scrubbed[gone]
    due = [r for r in rows if r.id not in _scrubbed or now - _scrubbed[r.id] >= SCRUB_INTERVAL]
    due.sort(key=lambda r: (r.id in _scrubbed, _scrubbed.get(r.id, now)))
    damaged = []
    for row in due[:limit]:
        _scrubbed[row.id] = now
        path = snapshot_path(instance, row)
        key = _file_key(path, row)
        if key is None or not _full_check(row, path, key):
            damaged.append(_info(instance, row))
    return damaged


def _delete(instance: Instance, snapshot_id: str, *, actor: str, event: audit.Event) -> SnapshotInfo:
    with instance.transaction() as session:
        row = _load(session, snapshot_id)
        busy = session.scalar(
            select(DirectoryRestore.id).where(
                DirectoryRestore.snapshot_id == snapshot_id,
                DirectoryRestore.state.in_(("pending", "loading")),
            )
        )
        if busy is not None:
            raise Conflict(f"snapshot {snapshot_id} is being restored: delete it after the restore ends")
        gone = _info(instance, row, check=False)
        path = snapshot_path(instance, row)
        session.delete(row)
        audit.record(
            session,
            instance.clock,
            event,
            actor=actor,
            target=snapshot_id,
            details={"directory": row.directory_id, "type": row.type},
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return gone


def delete(instance: Instance, snapshot_id: str, *, region: str | None = None, actor: str) -> SnapshotInfo:
    """Delete a snapshot and its file."""
    with instance.session() as session:
        row = _load(session, snapshot_id)
        _check_region(directories.load(session, row.directory_id), region)
    return _delete(instance, snapshot_id, actor=actor, event=audit.Event.SNAPSHOT_DELETED)


def limits(instance: Instance, directory_id: str) -> SnapshotLimits:
    with instance.session() as session:
        reason = _unsnapshottable_reason(directories.load(session, directory_id))
        count = session.scalar(
            select(func.count())
            .select_from(Snapshot)
            .where(
                Snapshot.directory_id == directory_id,
                Snapshot.type == "Manual",
                Snapshot.status != "Failed",
            )
        )
    count = int(count or 0)
    if reason is not None:
        return SnapshotLimits(
            manual_limit=MANUAL_LIMIT,
            manual_count=count,
            manual_limit_reached=False,
            snapshots_supported=False,
            unsupported_reason=reason,
        )
    return SnapshotLimits(
        manual_limit=MANUAL_LIMIT, manual_count=count, manual_limit_reached=count >= MANUAL_LIMIT
    )


def restore(instance: Instance, snapshot_id: str, *, region: str | None = None, actor: str) -> DirectoryInfo:
    """Start restoring the snapshot into its own directory and return at once (Restoring).

    Refused: outside the primary region, for an AD Connector, for a snapshot older than 180
    days or not Completed, for a file that fails its checksum, while a restore runs.
    """
    from ams.directory import restore as restore_worker

    now = instance.clock.now()
    with instance.session() as session:
        row = _load(session, snapshot_id)
        directory = directories.load(session, row.directory_id)
        _check_region(directory, region)
        _check_snapshottable(directory)
        if row.status != "Completed":
            raise Conflict(
                f"snapshot {snapshot_id} is {row.status}: only a Completed snapshot can be restored"
            )
        age = now - row.start_time
        if age > MAX_RESTORE_AGE:
            raise SnapshotTooOld(
                f"snapshot {snapshot_id} was taken {age.days} days ago; snapshots older than 180 days "
                "cannot be restored: choose a newer snapshot"
            )
        if not _checksum_ok(instance, row):  # and the worker checks the whole file as it loads
            snapfile.verify(snapshot_path(instance, row), row.sha256)  # raises, with the reason
    with instance.transaction() as session:
        directory = directories.load(session, row.directory_id, for_update=True)
        directories.refuse_while_restoring(directory)
        directory.last_generation += 1
        session.add(
            DirectoryRestore(
                directory_id=directory.id,
                snapshot_id=snapshot_id,
                state="pending",
                previous_generation=directory.generation,
                target_generation=directory.last_generation,
                attempts=0,
                requested_by=actor,
                requested_at=now,
            )
        )
        directories.set_stage(directory, "Restoring", now, f"restoring snapshot {snapshot_id}")
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_RESTORE_STARTED,
            actor=actor,
            target=directory.id,
            details={"snapshot": snapshot_id},
        )
        session.flush()
        started = directories.info(session, directory)
    restore_worker.notify()
    return started
