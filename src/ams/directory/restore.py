"""The restore worker: carries out queued restores, journalled so a crash is harmless.

A restore request (``snapshots.restore``) leaves a ``directory_restores`` row in state
``pending`` and the directory ``Restoring``. :func:`run_pending` then, for each row:

1. ``loading``: remove leftovers of an earlier attempt, copy the entries into the row's
   *target generation* in batches, checking the snapshot file's checksum in the same pass
   (step 2 comes only after it passed). The directory still serves (well, refuses, being
   Restoring) its *live* generation: nothing it holds changes.
2. the switch, ONE transaction: the directory's live generation becomes the target, its
   stage ``Active``, the primary region's data generation the target, the other regions
   ``Updating``, the row ``switched``.
3. replicas converge (each additional region moves to the new generation, ``Active``),
   then the old generation's rows are deleted and the row is ``done``.

A failure in step 1 deletes the staged rows and leaves the directory ``RestoreFailed``
with its old data and the reason. A crash before step 2 leaves a ``loading`` row: the next
worker (``ams serve`` at start, or any ``ams directory``/``ams snapshot`` command when no
service runs) starts it again from the beginning. A crash after step 2 leaves a
``switched`` row: the next worker finishes steps 3. Either way the directory serves the old
data or the snapshot's, never a mix, and its stage says which.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from sqlalchemy import Connection, delete, select, update

from ams import audit
from ams.db.models.directory import (
    Directory,
    DirectoryObject,
    DirectoryRegion,
    DirectoryRestore,
    DirectoryValue,
    Snapshot,
)
from ams.directory import directories, regions, snapfile, valueindex
from ams.directory.directories import snapshot_path
from ams.instance import Instance
from ams.vault import legacy

__all__ = ["RestoreResult", "notify", "pending_count", "register", "run_pending", "unregister"]

_BATCH = 20000
_INSERT_QMARK = (
    "INSERT INTO directory_objects (directory_id, generation, dn, dn_norm, object_classes, attributes) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_FORMAT = _INSERT_QMARK.replace("?", "%s")
_ACTIVE_STATES = ("pending", "loading", "switched")

# Workers in this process, woken when a restore is queued.
_wakers: list[threading.Event] = []
_wakers_lock = threading.Lock()
_run_lock = threading.Lock()


def register(event: threading.Event) -> None:
    with _wakers_lock:
        _wakers.append(event)


def unregister(event: threading.Event) -> None:
    with _wakers_lock, contextlib.suppress(ValueError):
        _wakers.remove(event)


def notify() -> None:
    """Wake the restore workers of this process (if any): a restore was queued."""
    with _wakers_lock:
        for event in _wakers:
            event.set()


@dataclass(frozen=True)
class RestoreResult:
    directory_id: str
    snapshot_id: str
    state: str  # done | failed
    entries: int
    reason: str | None = None


def _owner() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    """Is the process that claimed a journal row still running (on this host)?"""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname()[:40]:
        return True  # another node's: leave it to that node
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # our own from an earlier, interrupted attempt in this process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pending_count(instance: Instance) -> int:
    with instance.session() as session:
        return len(
            session.scalars(
                select(DirectoryRestore.id).where(DirectoryRestore.state.in_(_ACTIVE_STATES))
            ).all()
        )


def _claim(instance: Instance, journal_id: int) -> DirectoryRestore | None:
    """Take a journal row for this process; None when another live process holds it."""
    with instance.transaction() as session:
        # Locked on PostgreSQL, so two nodes never both take the same restore.
        row = session.get(DirectoryRestore, journal_id, with_for_update=True)
        if row is None or row.state not in _ACTIVE_STATES:
            return None
        if row.state != "pending" and _owner_alive(row.owner):
            return None
        resumed = row.state != "pending"
        row.owner = _owner()
        row.attempts += 1
        if resumed:
            audit.record(
                session,
                instance.clock,
                audit.Event.DIRECTORY_RESTORE_RESUMED,
                actor="service",
                target=row.directory_id,
                details={"snapshot": row.snapshot_id, "state": row.state, "attempt": row.attempts},
            )
        if row.state == "pending":
            row.state = "loading"
        session.flush()
        session.expunge(row)
        return row


def run_pending(
    instance: Instance,
    *,
    progress: Callable[[str, int], None] | None = None,
    hook: Callable[[str, int], None] | None = None,
) -> list[RestoreResult]:
    """Carry out every queued or interrupted restore; return what became of each.

    ``progress(directory_id, entries_loaded)`` reports as batches load. ``hook(stage,
    entries)`` is called at each step (``loaded`` after each batch, ``switched``) so tests
    can inject a failure or simulate a crash there.
    """
    # One worker at a time in this process: a row this process claimed earlier counts as
    # abandoned (see _owner_alive), which is only true when no other thread is on it.
    with _run_lock:
        with instance.session() as session:
            ids = session.scalars(
                select(DirectoryRestore.id)
                .where(DirectoryRestore.state.in_(_ACTIVE_STATES))
                .order_by(DirectoryRestore.id)
            ).all()
        results = []
        for journal_id in ids:
            row = _claim(instance, journal_id)
            if row is not None:
                results.append(_run(instance, row, progress, hook))
        return results


def _run(
    instance: Instance,
    job: DirectoryRestore,
    progress: Callable[[str, int], None] | None,
    hook: Callable[[str, int], None] | None,
) -> RestoreResult:
    loaded = 0
    if job.state == "loading":
        try:
            loaded = _load(instance, job, progress, hook)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the old data, say why
            return _fail(instance, job, exc)
        _switch(instance, job, loaded)
        if hook is not None:
            hook("switched", loaded)
    regions.converge(instance, job.directory_id, job.target_generation)
    _cleanup(instance, job)
    entries = loaded
    if job.state == "switched":  # resumed after the switch: the count is the snapshot's
        with instance.session() as session:
            snap = session.get(Snapshot, job.snapshot_id)
            entries = (snap.entries or 0) if snap else 0
    return RestoreResult(job.directory_id, job.snapshot_id, "done", entries)


def _drop_generation(instance: Instance, directory_id: str, generation: int) -> None:
    with instance.transaction() as session:
        session.execute(
            delete(DirectoryValue).where(
                DirectoryValue.directory_id == directory_id, DirectoryValue.generation == generation
            )
        )
        session.execute(
            delete(DirectoryObject).where(
                DirectoryObject.directory_id == directory_id, DirectoryObject.generation == generation
            )
        )


def _load(
    instance: Instance,
    job: DirectoryRestore,
    progress: Callable[[str, int], None] | None,
    hook: Callable[[str, int], None] | None,
) -> int:
    with instance.session() as session:
        snap = session.get(Snapshot, job.snapshot_id)
        if snap is None:
            raise FileNotFoundError(f"snapshot {job.snapshot_id} was deleted before it could be restored")
        path = snapshot_path(instance, snap)
        expected = snap.sha256
    try:
        return _stage(instance, job, path, expected, progress, hook)
    except Exception:
        # A damaged file can fail in many ways before its checksum is reached: if it is
        # damaged, say so as a check of the whole file does.
        snapfile.verify(path, expected)
        raise


def _stage(
    instance: Instance,
    job: DirectoryRestore,
    path: Path,
    expected: str | None,
    progress: Callable[[str, int], None] | None,
    hook: Callable[[str, int], None] | None,
) -> int:
    """Copy the file's entries into the target generation, checking the file's checksum in
    the same pass: the last batch is handed over only once it has passed, and nothing goes
    live before this returns (the switch is the caller's next step)."""
    header, blocks = snapfile.read_blocks(path, expected)
    with contextlib.closing(blocks):  # the file is closed however this ends
        if header.get("directory_id") != job.directory_id:
            raise ValueError(f"snapshot file {path.name} belongs to directory {header.get('directory_id')}")
        # Leftovers of an interrupted attempt: this generation was never live, so drop it whole.
        _drop_generation(instance, job.directory_id, job.target_generation)
        count = 0
        directory_id, generation = job.directory_id, job.target_generation

        def batches() -> Iterator[list[tuple[str, int, str, str, str, str]]]:
            pending: list[tuple[str, int, str, str, str, str]] = []
            for dns, norms, classes, attributes in blocks:
                pending.extend(zip(repeat(directory_id), repeat(generation), dns, norms, classes, attributes))
                while len(pending) >= _BATCH:
                    yield pending[:_BATCH]
                    del pending[:_BATCH]
            if pending:
                yield pending

        with _loading_connection(instance) as conn:
            sql = _INSERT_QMARK if conn.dialect.paramstyle == "qmark" else _INSERT_FORMAT
            # No reader thread: a block parses in a few milliseconds (two JSON parses, two
            # splits), and a thread parsing ahead would fight executemany for the GIL, which
            # it takes back after every row (measured: the load took 15-20% longer).
            indexed = 0
            for batch in batches():
                # Straight to the driver: at 100,000 entries the ORM's per-row work would dominate.
                with conn.begin():
                    conn.exec_driver_sql(sql, batch)
                    # The batch's rows into the equality index, in the same transaction.
                    indexed = valueindex.index_generation(conn, directory_id, generation, after_id=indexed)
                count += len(batch)
                if progress is not None:
                    progress(directory_id, count)
                if hook is not None:
                    hook("loaded", count)
        return count


@contextlib.contextmanager
def _loading_connection(instance: Instance) -> Iterator[Connection]:
    """One connection for a bulk load or delete. On SQLite, while it works:

    - a large page cache: the unique DN index of two generations outgrows the default 8 MiB;
    - no checkpoint after each batch, one at the end: each would copy the WAL back into the
      database and fsync it, again for the index pages every batch touches (the WAL grows
      to about the size of the load meanwhile);
    - ``secure_delete=FAST``: where SQLite is built to zero what it deletes (Debian's is),
      it then does so only where that costs no extra writes, which halves the commit of a
      replaced generation's deletion. The entries are no secret at rest: the snapshot
      files hold them in plain text (docs/security.md).
    """
    with instance.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            secure_delete = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
            conn.exec_driver_sql("PRAGMA cache_size=-131072")
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            conn.exec_driver_sql("PRAGMA secure_delete=FAST")
            conn.commit()
        try:
            yield conn
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                conn.exec_driver_sql("PRAGMA cache_size=-2000")
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint=1000")
                conn.exec_driver_sql(f"PRAGMA secure_delete={int(secure_delete or 0)}")
                conn.commit()


def _switch(instance: Instance, job: DirectoryRestore, loaded: int) -> None:
    now = instance.clock.now()
    with instance.transaction() as session:
        directory = directories.load(session, job.directory_id, for_update=True)
        directory.generation = job.target_generation
        directories.set_stage(directory, "Active", now)
        for region in session.scalars(
            select(DirectoryRegion).where(DirectoryRegion.directory_id == job.directory_id)
        ).all():
            if region.type == "Primary":
                region.data_generation = job.target_generation
                region.status = "Active"
            else:
                region.status = "Updating"
            region.last_updated_at = now
        row = session.get(DirectoryRestore, job.id)
        assert row is not None
        row.state = "switched"
        # Passwords stored on computer objects went back in time with them: the devices whose
        # object holds an older one must rotate (ams.vault.legacy), decided in this transaction.
        rolled_back = legacy.detect_restored_rollbacks(
            session,
            instance.clock,
            job.directory_id,
            job.target_generation,
            actor=job.requested_by,
            snapshot_id=job.snapshot_id,
        )
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_RESTORE_COMPLETED,
            actor=job.requested_by,
            target=job.directory_id,
            details={
                "snapshot": job.snapshot_id,
                "entries": loaded,
                "passwords_rolled_back": [r.device_id for r in rolled_back],
            },
        )


def _cleanup(instance: Instance, job: DirectoryRestore) -> None:
    """Remove every generation but the live one, then close the journal row."""
    with instance.session() as session:
        live = session.scalar(select(Directory.generation).where(Directory.id == job.directory_id))
    if live is not None:
        with _loading_connection(instance) as conn, conn.begin():
            conn.execute(
                delete(DirectoryValue).where(
                    DirectoryValue.directory_id == job.directory_id, DirectoryValue.generation != live
                )
            )
            conn.execute(
                delete(DirectoryObject).where(
                    DirectoryObject.directory_id == job.directory_id, DirectoryObject.generation != live
                )
            )
    with instance.transaction() as session:
        session.execute(
            update(DirectoryRestore)
            .where(DirectoryRestore.id == job.id)
            .values(state="done", finished_at=instance.clock.now())
        )


def _fail(instance: Instance, job: DirectoryRestore, exc: Exception) -> RestoreResult:
    reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    reason = str(reason)[:500]
    _drop_generation(instance, job.directory_id, job.target_generation)
    now = instance.clock.now()
    with instance.transaction() as session:
        directory = session.get(Directory, job.directory_id)
        if directory is not None:
            directories.set_stage(
                directory,
                "RestoreFailed",
                now,
                f"restoring snapshot {job.snapshot_id} failed: {reason}; the entries are as before",
            )
        row = session.get(DirectoryRestore, job.id)
        if row is not None:
            row.state = "failed"
            row.failure_reason = reason
            row.finished_at = now
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_RESTORE_FAILED,
            actor=job.requested_by,
            target=job.directory_id,
            outcome="failure",
            details={"snapshot": job.snapshot_id, "reason": reason},
        )
    return RestoreResult(job.directory_id, job.snapshot_id, "failed", 0, reason)
