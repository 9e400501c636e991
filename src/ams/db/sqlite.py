"""The embedded database as :mod:`sqlite3` sees it, for the few paths that skip SQLAlchemy.

``ams backup create`` on the embedded database, and a restore's writes into the staged
copy, use plain :mod:`sqlite3`: loading SQLAlchemy and the models would cost more than half
a second of a command whose work is copying the database. They connect with the same
settings as the engine (:func:`apply_pragmas`, also what :mod:`ams.db.engine` runs on each
new connection) and store times as the models do (:func:`db_time`).
``tests/backup/test_backup_embedded.py`` compares what both paths write.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["apply_pragmas", "connect", "db_time"]

BUSY_TIMEOUT_MS = 30000


def apply_pragmas(dbapi_conn: Any) -> None:
    """WAL, normal sync, foreign keys, and a 30 s wait for a busy database."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cur.close()


def connect(path: Path) -> sqlite3.Connection:
    """An existing database (never creates one), in autocommit mode: say BEGIN to start."""
    conn = sqlite3.connect(
        f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
    try:
        apply_pragmas(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def db_time(value: datetime) -> str:
    """A timezone-aware time as the models keep it in SQLite (``Timestamp``: naive UTC text,
    in the format SQLAlchemy's SQLite ``DATETIME`` writes)."""
    if value.tzinfo is None:
        raise ValueError("AMS stores timezone-aware times only")
    # The text of strftime("%Y-%m-%d %H:%M:%S.%f"), at a fifth of its cost.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
