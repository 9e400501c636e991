"""A consistent image of a live SQLite database in WAL mode, read in one pass.

``ams backup create`` needs the database exactly as of one commit while agents keep
writing. SQLite's online backup API gives that, but only into another database file, which
must then be read a second time to be encrypted: two passes over the data. This module
reads the image directly instead, inside one read transaction, from the database file and
the write-ahead log (both formats are documented: https://www.sqlite.org/fileformat2.html
and https://www.sqlite.org/walformat.html).

Why the image is exactly the transaction's snapshot:

* A read transaction's snapshot is the database file overlaid with the WAL frames
  ``1..mxFrame`` of the wal-index header it started with (for each page, the newest frame).
  We read that header from the ``-shm`` file before and after starting the transaction; if
  both reads agree (both copies of the header, byte for byte), no commit came in between,
  so that header is the transaction's. Otherwise we roll back and try again.
* While the transaction holds its read lock, SQLite neither restarts the WAL (so frames
  ``1..mxFrame`` are never overwritten) nor backfills into the database file any frame newer
  than the transaction's read mark (``<= mxFrame``). A page the checkpointer may be writing
  into the database file while we read it therefore always has a frame ``<= mxFrame``, and
  we take that page from the WAL, never from the file.
* When every frame was already backfilled (``nBackfill >= mxFrame``), the database file alone
  is the snapshot, and nothing writes into it while the transaction lasts.

The reading runs in a short-lived child process (this file run as a script, standard library
only). SQLite's locks are POSIX record locks, which belong to a process and are all dropped
when the process closes *any* descriptor of the file: opening and closing the database, its
WAL or its wal-index here, next to the service's own connections, would silently release
their locks. In the child, our connection and our descriptors are the only ones, and they
end together. The child writes one JSON line (page size, page count, the manifest's facts
read in the same transaction) and then exactly the image's bytes to its standard output.

Anything unexpected (not WAL mode, a header that keeps changing, a page in neither file)
makes :func:`open_image` fall back to SQLite's own backup API into a scratch file: slower,
but it needs none of the above.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["DatabaseImage", "ImageUnavailable", "connection_facts", "open_image"]

_HDR = 48  # sizeof(WalIndexHdr); the shm starts with two copies of it
_HDR_FIELDS = struct.Struct("=IIIBBHIIIIIIII")  # native byte order, as SQLite writes it
_BACKFILL = struct.Struct("=I")  # WalCkptInfo.nBackfill, right after the two headers
_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_ATTEMPTS = 200
_CHUNK = 1 << 20
_EXIT_UNAVAILABLE = 3

log = logging.getLogger(__name__)

Write = Callable[[bytes], object]


class ImageUnavailable(Exception):
    """The one-pass image cannot be read here; use the backup API instead."""


# -- what the manifest says about the database ---------------------------------------------


def _utc_text(value: str | None) -> str | None:
    """SQLite keeps naive UTC text; the manifest carries ISO 8601 with an offset."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def database_facts(db_path: Path) -> dict[str, Any]:
    """What the manifest says about a database file (a copy, or a staged backup)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return connection_facts(conn)
    finally:
        conn.close()


def connection_facts(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the manifest says about the database as ``conn`` sees it (inside its transaction)."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    instance_id, fingerprint = conn.execute("SELECT id, master_key_fingerprint FROM instance").fetchone()
    # The home that writes this backup (revision 0006 on); older schemas have none.
    home_id = (
        conn.execute("SELECT home_id FROM instance").fetchone()[0]
        if any(r[1] == "home_id" for r in conn.execute('PRAGMA table_info("instance")'))
        else None
    )
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
    return {
        "schema_revision": revision,
        "instance_id": instance_id,
        "master_key_fingerprint": fingerprint,
        "home_id": home_id,
        "recovery_wrapping": json.loads(row[0]) if row else None,
        "recovery_password_set_at": _utc_text(row[1]) if row else None,
        "certificates": certificates,
        "counts": counts,
    }


# -- the parent side ------------------------------------------------------------------------


class DatabaseImage:
    """The database as of one read transaction: its manifest facts, size, and bytes."""

    def __init__(self, facts: dict[str, Any], size: int, read: Callable[[int], bytes], source: str) -> None:
        self.facts = facts
        self.size = size
        self.source = source  # "wal" (read in one pass) or "backup-api" (the fallback)
        self._read = read

    def copy(self, write: Write) -> None:
        """Write exactly :attr:`size` bytes; a helper thread reads ahead meanwhile."""
        chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=8)
        stop = threading.Event()

        def read_ahead() -> None:
            left = self.size
            try:
                while left and not stop.is_set():
                    data = self._read(min(_CHUNK, left))
                    if not data:
                        raise ImageUnavailable("the database image ended early")
                    chunks.put(data)
                    left -= len(data)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                chunks.put(exc)

        reader = threading.Thread(target=read_ahead, name="ams-backup-read", daemon=True)
        reader.start()
        left = self.size
        try:
            while left:
                item = chunks.get()
                if isinstance(item, BaseException):
                    raise item
                write(item)
                left -= len(item)
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.05)
            reader.join()


def _start_child(db_path: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the reader; return it with its first line, or raise ImageUnavailable."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and file, no shell
        [sys.executable, "-I", __file__, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    with contextlib.suppress(AttributeError, OSError):
        import fcntl

        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)
    try:
        head = json.loads(proc.stdout.readline(16 << 20))
    except ValueError:
        head = None
    if isinstance(head, dict) and isinstance(head.get("size"), int) and isinstance(head.get("facts"), dict):
        return proc, head
    raise ImageUnavailable(_stop_child(proc) or "the image reader stopped")


def _stop_child(proc: subprocess.Popen[bytes]) -> str:
    """Stop the reader (if it still runs) and close its pipes; return its last error line."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reason = ""
    if proc.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            lines = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1] if lines else ""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return reason


@contextlib.contextmanager
def _backup_api_image(db_path: Path, scratch: Path) -> Iterator[DatabaseImage]:
    """SQLite's online backup API in one step (one read transaction), into ``scratch``."""
    copy = scratch / "ams.db"
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(copy)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        source.backup(target, pages=-1)
    finally:
        target.close()
        source.close()
    os.chmod(copy, 0o600)
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        facts = connection_facts(conn)
    finally:
        conn.close()
    with open(copy, "rb") as handle:
        yield DatabaseImage(facts, os.fstat(handle.fileno()).st_size, handle.read, "backup-api")


@contextlib.contextmanager
def open_image(db_path: Path, scratch: Path) -> Iterator[DatabaseImage]:
    """The database as of now; ``scratch`` (a private folder) is used only by the fallback."""
    try:
        proc, head = _start_child(db_path)
    except ImageUnavailable as exc:
        log.debug("reading the database through the backup API instead: %s", exc)
        with _backup_api_image(db_path, scratch) as image:
            yield image
        return
    assert proc.stdout is not None
    failure = ""
    try:
        yield DatabaseImage(head["facts"], head["size"], proc.stdout.read, "wal")
        assert proc.stdin is not None
        proc.stdin.close()  # every byte was read: the reader may release its transaction
        if proc.stdout.read(1):
            failure = "the database image was longer than announced"
        elif proc.wait() != 0:
            failure = "the image reader failed"
    finally:
        reason = _stop_child(proc)
    if failure:
        raise ImageUnavailable(f"{failure}: {reason}" if reason else failure)


# -- the child side -------------------------------------------------------------------------


def _read_index_header(shm_fd: int) -> tuple[bytes, int] | None:
    """(the wal-index header, nBackfill), or None when its two copies disagree (mid-write)."""
    raw = os.pread(shm_fd, 2 * _HDR + _BACKFILL.size, 0)
    if len(raw) < 2 * _HDR + _BACKFILL.size or raw[:_HDR] != raw[_HDR : 2 * _HDR]:
        return None
    return raw[:_HDR], _BACKFILL.unpack_from(raw, 2 * _HDR)[0]


def _wal_frames(wal_fd: int, page_size: int, mx_frame: int, salt: bytes) -> dict[int, int]:
    """For each page in frames 1..mx_frame, the file offset of its newest frame's data.

    ``salt`` is the 8 salt bytes the wal-index copied from the WAL header (SQLite keeps them
    as raw bytes, unlike the header's other fields); every frame of the current log repeats
    them.
    """
    frame = _FRAME_HEADER.size + page_size
    header = os.pread(wal_fd, _WAL_HEADER.size, 0)
    if len(header) != _WAL_HEADER.size:
        raise ImageUnavailable("the WAL header is incomplete")
    magic, _version, wal_page_size = _WAL_HEADER.unpack(header)[:3]
    if magic not in _WAL_MAGIC or wal_page_size != page_size or header[16:24] != salt:
        raise ImageUnavailable("the WAL header does not match the wal-index")
    pages: dict[int, int] = {}
    batch = 1024
    for start in range(0, mx_frame, batch):
        count = min(batch, mx_frame - start)
        base = _WAL_HEADER.size + start * frame
        data = os.pread(wal_fd, count * frame, base)
        if len(data) != count * frame:
            raise ImageUnavailable("the WAL is shorter than its index says")
        for i in range(count):
            at = i * frame
            pgno = int.from_bytes(data[at : at + 4], "big")
            if data[at + 8 : at + 16] != salt or pgno < 1:
                raise ImageUnavailable("a WAL frame does not belong to the current log")
            pages[pgno] = base + at + _FRAME_HEADER.size
    return pages


def _begin(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN")
    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the read lock


def _segments(
    db_fd: int, wal_fd: int, page_size: int, page_count: int, wal_pages: dict[int, int]
) -> Iterator[tuple[int, int, int]]:
    """The image as (descriptor, offset, length) runs: database pages, or WAL frames' pages."""
    pages_in_file = os.fstat(db_fd).st_size // page_size
    run_start = 0  # first page (0-based) of the pending run from the database file
    for pgno in sorted(wal_pages):
        index = pgno - 1
        if index > run_start:
            if index > pages_in_file:
                raise ImageUnavailable(f"page {pages_in_file + 1} is in neither the database nor its WAL")
            yield db_fd, run_start * page_size, (index - run_start) * page_size
        yield wal_fd, wal_pages[pgno], page_size
        run_start = index + 1
    if run_start < page_count:
        if page_count > pages_in_file:
            raise ImageUnavailable(f"page {pages_in_file + 1} is in neither the database nor its WAL")
        yield db_fd, run_start * page_size, (page_count - run_start) * page_size


def _send(out_fd: int, segments: Iterator[tuple[int, int, int]]) -> None:
    """Copy the runs to ``out_fd``: with splice(2) into a pipe (no copy through this process)."""
    splice = getattr(os, "splice", None)
    for fd, offset, length in segments:
        while length:
            step = min(length, _CHUNK)
            if splice is not None:
                try:
                    moved = splice(fd, out_fd, step, offset_src=offset)
                except OSError:
                    splice = None
                    continue
            else:
                data = os.pread(fd, step, offset)
                if not data:
                    moved = 0
                else:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out_fd, view) :]
                    moved = len(data)
            if moved <= 0:
                raise ImageUnavailable("a file ended before the page it should hold")
            offset += moved
            length -= moved


def _child(db_path: Path, out: BinaryIO) -> None:
    # mode=rw: it may create the -wal and -shm files (a read-only connection could not);
    # it never writes to the database.
    connection = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, timeout=30, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=30000")
    if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        raise ImageUnavailable("the database is not in WAL mode")
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL and its index
    # Descriptors opened here are closed only when this process exits (after the connection).
    shm_fd = os.open(f"{db_path}-shm", os.O_RDONLY)
    wal_fd = os.open(f"{db_path}-wal", os.O_RDONLY)
    db_fd = os.open(db_path, os.O_RDONLY)
    for attempt in range(_ATTEMPTS):
        before = _read_index_header(shm_fd)
        _begin(connection)
        after = _read_index_header(shm_fd)
        if before is not None and after is not None and before[0] == after[0]:
            break
        connection.execute("ROLLBACK")
        time.sleep(0.0005 * min(attempt, 20))
    else:
        raise ImageUnavailable("the database kept changing while the snapshot was being taken")
    header, backfilled = after
    fields = _HDR_FIELDS.unpack(header)
    version, is_init, hdr_page_size, mx_frame = fields[0], fields[3], fields[5], fields[6]
    if version != 3007000 or not is_init:
        raise ImageUnavailable("the wal-index header is not one this reader knows")
    if mx_frame and (65536 if hdr_page_size == 1 else hdr_page_size) != page_size:
        raise ImageUnavailable("the wal-index names another page size")
    page_count = int(connection.execute("PRAGMA page_count").fetchone()[0])
    wal_pages: dict[int, int] = {}
    if backfilled < mx_frame:
        frames = _wal_frames(wal_fd, page_size, mx_frame, header[32:40])
        wal_pages = {p: at for p, at in frames.items() if p <= page_count}
    first = os.pread(wal_fd, 16, wal_pages[1]) if 1 in wal_pages else os.pread(db_fd, 16, 0)
    if first != b"SQLite format 3\0":
        raise ImageUnavailable("the first page is not a SQLite header")
    segments = list(_segments(db_fd, wal_fd, page_size, page_count, wal_pages))
    head = {"size": page_size * page_count, "facts": connection_facts(connection)}
    out.write(json.dumps(head).encode("utf-8") + b"\n")
    out.flush()
    _send(out.fileno(), iter(segments))
    # splice(2) put references to the files' pages into the pipe, not copies: the read lock
    # that keeps those pages unchanged must last until the parent has read every byte. It
    # says so by closing our standard input.
    sys.stdin.buffer.read()
    connection.execute("ROLLBACK")
    connection.close()


def _main(argv: list[str]) -> int:
    try:
        _child(Path(argv[0]), sys.stdout.buffer)
    except (ImageUnavailable, OSError, sqlite3.Error) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_UNAVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
