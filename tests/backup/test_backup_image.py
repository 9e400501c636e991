"""The one-pass database image (ams.backup.sqlite_image) against the real SQLite library.

The image is read from the database file and its WAL while writers commit and checkpoints
run; these tests prove it is exactly one commit's state, that it never disturbs the locks
of the process asking for it, and that the fallback (SQLite's backup API) gives the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ams.backup.sqlite_image import open_image
from ams.crypto import PayloadReader, PayloadWriter
from ams.instance import Instance


def _add_table(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        conn.execute("CREATE TABLE bench_total (id INTEGER PRIMARY KEY, rows INTEGER, digest TEXT)")
        conn.execute("INSERT INTO bench_total VALUES (1, 0, '')")
    conn.close()


def _commit_rows(conn: sqlite3.Connection, first: int, count: int, size: int = 3000) -> None:
    """One transaction: rows and, in the same commit, their count and a running digest."""
    with conn:
        rows, digest = conn.execute("SELECT rows, digest FROM bench_total").fetchone()
        for i in range(first, first + count):
            body = os.urandom(size)
            conn.execute("INSERT INTO bench_rows VALUES (?, ?)", (i, body))
            digest = hashlib.sha256(digest.encode() + body).hexdigest()
        conn.execute("UPDATE bench_total SET rows = ?, digest = ?", (rows + count, digest))


def _check_image(data: bytes, tmp_path: Path, name: str) -> tuple[int, dict[str, int]]:
    """The image opens, passes integrity_check, and its running digest matches its rows."""
    path = tmp_path / name
    path.write_bytes(data)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows, digest = conn.execute("SELECT rows, digest FROM bench_total").fetchone()
        again = ""
        for (body,) in conn.execute("SELECT body FROM bench_rows ORDER BY id"):
            again = hashlib.sha256(again.encode() + body).hexdigest()
        assert conn.execute("SELECT count(*) FROM bench_rows").fetchone()[0] == rows
        assert again == digest, "the image mixes two commits"
        counts = {
            t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # noqa: S608
            for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    finally:
        conn.close()
    return rows, counts


def _read_image(db: Path, scratch: Path, pause: float = 0.0) -> tuple[bytes, dict[str, object], str]:
    out = bytearray()

    def write(data: bytes) -> None:
        out.extend(data)
        if pause:
            time.sleep(pause)

    with open_image(db, scratch) as image:
        image.copy(write)
        assert len(out) == image.size
        return bytes(out), image.facts, image.source


def test_an_image_taken_under_writes_and_checkpoints_is_one_commit(
    instance: Instance, tmp_path: Path
) -> None:
    db = instance.home.sqlite_path
    _add_table(db)
    seed = sqlite3.connect(db)
    _commit_rows(seed, 0, 3000)  # ~10 MB, so that reading it takes a while
    seed.close()
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = [0]

    def writer() -> None:
        conn = sqlite3.connect(db, timeout=30)
        next_id = 10_000
        try:
            while not stop.is_set():
                _commit_rows(conn, next_id, 7)
                # Rewrite old pages too, so that the checkpointer backfills pages the
                # image is reading from the database file.
                with conn:
                    conn.execute(
                        "UPDATE bench_rows SET body = body WHERE id IN (SELECT id FROM bench_rows "
                        "ORDER BY random() LIMIT 20)"
                    )
                next_id += 7
                commits[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    def checkpointer() -> None:
        conn = sqlite3.connect(db, timeout=30)
        try:
            while not stop.is_set():
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=checkpointer)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        images = []
        for i in range(3):
            start = commits[0]
            data, facts, source = _read_image(db, tmp_path, pause=0.01)
            assert source == "wal"
            assert commits[0] > start, "no commit happened while the image was read"
            images.append((data, facts, i))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    for data, facts, i in images:
        rows, counts = _check_image(data, tmp_path, f"image-{i}.db")
        assert rows >= 3000
        # The manifest's counts were read in the same transaction as the pages.
        assert facts["counts"] == {k: v for k, v in counts.items() if k != "sqlite_sequence"}


def test_pages_that_live_only_in_the_wal_are_in_the_image(instance: Instance, tmp_path: Path) -> None:
    db = instance.home.sqlite_path
    _add_table(db)
    holder = sqlite3.connect(db)
    holder.execute("PRAGMA wal_autocheckpoint=0")
    _commit_rows(holder, 0, 2000)  # all of it in the WAL: the database file stays small
    assert db.stat().st_size < Path(f"{db}-wal").stat().st_size
    data, facts, source = _read_image(db, tmp_path)
    assert source == "wal"
    rows, _ = _check_image(data, tmp_path, "image.db")
    assert rows == 2000 and facts["counts"]["bench_rows"] == 2000
    # Byte for byte the same database as SQLite's own backup API gives.
    copy = tmp_path / "backup-api.db"
    target = sqlite3.connect(copy)
    holder.backup(target)
    target.close()
    holder.close()
    dump_a = list(sqlite3.connect(tmp_path / "image.db").iterdump())
    dump_b = list(sqlite3.connect(copy).iterdump())
    assert dump_a == dump_b


def test_reading_the_image_leaves_this_process_locks_alone(instance: Instance, tmp_path: Path) -> None:
    """POSIX locks die with any descriptor of the file closed by the process that holds them:
    the reader runs in its own process so that the service's connections keep theirs."""
    db = instance.home.sqlite_path
    _add_table(db)
    mine = sqlite3.connect(db, isolation_level=None)
    mine.execute("BEGIN IMMEDIATE")  # this process holds the write lock
    mine.execute("INSERT INTO bench_rows VALUES (1, x'00')")
    try:
        data, _, source = _read_image(db, tmp_path)
        assert source == "wal" and data.startswith(b"SQLite format 3\0")
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
                "try:\n c.execute('BEGIN IMMEDIATE'); print('acquired')\n"
                "except sqlite3.OperationalError as e: print(e)",
                str(db),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.strip() == "database is locked"
    finally:
        mine.execute("ROLLBACK")
        mine.close()


def test_a_database_not_in_wal_mode_is_read_through_the_backup_api(
    instance: Instance, tmp_path: Path
) -> None:
    instance.close()
    db = instance.home.sqlite_path
    _add_table(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    _commit_rows(conn, 0, 50)
    conn.close()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data, facts, source = _read_image(db, scratch)
    assert source == "backup-api"
    rows, _ = _check_image(data, tmp_path, "image.db")
    assert rows == 50 and facts["counts"]["bench_rows"] == 50


@pytest.mark.parametrize("sizes", [[0], [4096], [4096, 4096], [1, 4095, 4096, 1], [10000, 3, 8189, 4096 * 3]])
def test_payload_chunks_do_not_depend_on_how_writes_are_cut(sizes: list[int]) -> None:
    key = os.urandom(32)
    data = os.urandom(sum(sizes))
    sink = io.BytesIO()
    writer = PayloadWriter(sink, key, chunk_bytes=4096)
    at = 0
    for size in sizes:
        writer.write(memoryview(data)[at : at + size])
        at += size
    writer.close()
    encrypted = sink.getvalue()
    # A full last chunk is followed by an empty final one: every chunk but the last is full.
    full = len(data) // 4096
    assert len(encrypted) == 25 + full * (4096 + 16) + (len(data) - full * 4096) + 16
    assert PayloadReader(io.BytesIO(encrypted), key).read() == data
