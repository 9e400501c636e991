"""The rotation's statements run on the database driver itself (issue 12).

The check-in and the report are the hot path (docs/architecture.md). Their statements are
the SQLAlchemy Core statements of :mod:`ams.vault.passwords`, compiled here once per
dialect into a fixed SQL string (named parameters: ``:name`` for sqlite3, ``%(name)s`` for
psycopg), and executed on the DBAPI connection of a pooled SQLAlchemy connection. So the SQL
is written once, by SQLAlchemy, and a rotation pays for none of its execution machinery
(parameter and result processing, cursor wrapping, events: about 60 µs a statement against
20 µs of sqlite3). What SQLAlchemy's types did is done here: times go in as the models
store them (:func:`ams.db.sqlite.db_time` on SQLite, aware UTC on PostgreSQL) and come
back timezone-aware in UTC.

On SQLite a write transaction of the hot path starts with ``BEGIN IMMEDIATE`` under an
exclusive ``flock`` on ``run/write.lock`` (:func:`writing`): the processes of ``ams serve
--workers N`` queue for the lock in the kernel, which wakes the next one the moment the
holder commits, instead of meeting SQLite's busy handler, which sleeps between retries
(1, 2, 5 … 100 ms) while its worker's event loop, and every request on it, waits. Other
writers (the CLI, administrators, scheduled jobs) do not take the file lock; they and the
hot path still exclude each other through SQLite's own lock and busy timeout.

Each process keeps one connection for its hot path (:func:`connect`), checked out of the
pool once, with an open descriptor of ``run/write.lock``: a request does not pay for a
checkout, a reset and an ``open`` of the lock file. Another thread of the process (a
FastAPI route that runs in one) gets a connection of the pool meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from ams.db.sqlite import db_time

__all__ = ["Hot", "Kept", "Row", "Statement", "as_utc", "connect", "end_read", "raw", "writing"]


class Row:
    """A result row, by column name (what the Core rows gave the callers)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


def as_utc(value: Any) -> datetime | None:
    """A stored time as SQLAlchemy's ``Timestamp`` type hands it back: aware, UTC."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite keeps naive UTC text
        value = datetime.fromisoformat(value)
    moment: datetime = value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]
    names: tuple[str, ...]


class Statement:
    """One Core statement, compiled once per dialect; run on a connection's driver."""

    def __init__(
        self, statement: ClauseElement, *, times: tuple[str, ...] = (), keys: list[str] | None = None
    ) -> None:
        self.statement = statement
        self.times = frozenset(times)  # parameters and columns holding times
        self.keys = keys  # an INSERT's columns
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            if dialect.name == "sqlite":
                from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

                dialect = SQLiteDialect_pysqlite(paramstyle="named")
            done = self.statement.compile(dialect=dialect, column_keys=self.keys)
            assert isinstance(done, SQLCompiler)
            defaults = {
                name: bind.value
                for name, bind in done.binds.items()
                if bind.value is not None and not name.startswith("%(")
            }
            selected = getattr(self.statement, "selected_columns", None)
            names = tuple(c.key for c in selected) if selected is not None and self.keys is None else ()
            compiled = self._compiled[dialect.name] = _Compiled(done.string, defaults, names)
        return compiled

    def _params(self, sqlite: bool, params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        for name in self.times & out.keys():
            value = out[name]
            if value is not None:
                out[name] = db_time(value) if sqlite else value.astimezone(UTC)
        return out

    def execute(self, conn: Connection, params: dict[str, Any]) -> int:
        """Run it on the connection's driver; the rows it changed."""
        dialect = conn.dialect
        compiled = self._compile(dialect)
        cursor = raw(conn).execute(
            compiled.sql, {**compiled.defaults, **self._params(dialect.name == "sqlite", params)}
        )
        count: int = cursor.rowcount
        return count

    def first(self, conn: Connection, params: dict[str, Any]) -> Row | None:
        """Its first row, times as aware UTC."""
        dialect = conn.dialect
        compiled = self._compile(dialect)
        cursor = raw(conn).execute(
            compiled.sql, {**compiled.defaults, **self._params(dialect.name == "sqlite", params)}
        )
        values = cursor.fetchone()
        if values is None:
            return None
        row = dict(zip(compiled.names, values, strict=True))
        for name in self.times & row.keys():
            row[name] = as_utc(row[name])
        return Row(row)


def raw(conn: Connection) -> Any:
    """The DBAPI connection (sqlite3's or psycopg's) under a SQLAlchemy connection."""
    return conn.connection.driver_connection


def _open_lock(lock: Path) -> int:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return -1  # no run/ folder to queue in: SQLite's own lock still excludes


@contextlib.contextmanager
def writing(conn: Connection, lock: Path | int) -> Iterator[None]:
    """A write transaction of ``conn``, committed at the end of the block (rolled back on an
    exception). On SQLite: ``BEGIN IMMEDIATE`` under the file lock ``lock`` that queues the
    hot path's writers of every worker process (the module's docstring): its path, or a
    descriptor of it that the caller keeps open (:func:`connect`'s) and only one thread uses
    at a time (a lock is the open file's: two threads on one descriptor would not queue)."""
    fd = -1
    if conn.dialect.name == "sqlite":
        fd = _open_lock(lock) if isinstance(lock, Path) else lock
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # SQLAlchemy's transaction (what a Session joins, for retention); on SQLite the
        # driver's, begun here so that it takes the write lock now.
        transaction = conn.begin()
        try:
            if conn.dialect.name == "sqlite":
                raw(conn).execute("BEGIN IMMEDIATE")
            yield
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()
    finally:
        if isinstance(lock, Path):
            if fd >= 0:
                os.close(fd)  # releases the lock
        elif fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_UN)


def end_read(conn: Connection) -> None:
    """End what reads began (psycopg opens a transaction with the first statement)."""
    if conn.in_transaction():
        conn.rollback()
    else:
        raw(conn).rollback()


class Hot:
    """A hot-path request's connection, and how its writes queue (:func:`connect`)."""

    __slots__ = ("conn", "lock")

    def __init__(self, conn: Connection, lock: Path | int) -> None:
        self.conn = conn
        self.lock = lock

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """:func:`writing` on this connection."""
        return writing(self.conn, self.lock)


class Kept:
    """The connection (and open write lock) a process keeps for its hot path: one for each
    open instance, owned by the instance's hot cache (ams.vault.hotcache), so it lives no
    longer than the instance: one dropped without being closed takes it along (``__del__``).
    The engine's disposal (``Instance.close``, the supervisor before it forks) closes it."""

    def __init__(self, engine: Engine, lock: Path) -> None:
        self.pid = os.getpid()
        self.engine = engine
        self.lock_path = lock
        self.busy = threading.Lock()
        self.conn: Connection | None = None
        self.fd = -1
        self.disposed = False
        self.used = 0.0  # time.monotonic() when a request last let go of it
        event.listen(engine, "engine_disposed", functools.partial(_disposed, weakref.ref(self)))

    def close(self) -> None:
        """Closes the connection itself (invalidated: a disposed pool would keep it open)."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.invalidate()
                self.conn.close()
            self.conn = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # Its instance was dropped without being closed: the connection goes with it (a
        # checked-out connection that is only garbage-collected keeps its engine alive).
        if self.pid == os.getpid():
            self.close()

    def forked(self) -> None:
        """In a child of the process that opened them: the parent's connection and lock are
        left untouched (closing them here would end the parent's session or lock)."""
        if self.conn is not None:
            _inherited.append(self.conn)
        self.conn, self.fd = None, -1
        self.pid = os.getpid()
        self.busy = threading.Lock()


_inherited: list[Connection] = []  # a parent's, never used nor finalized in a child


def _disposed(kept: weakref.ref[Kept], _engine: Engine) -> None:
    found = kept()
    if found is None or found.pid != os.getpid():
        return
    if found.busy.acquire(blocking=False):
        try:
            found.close()
        finally:
            found.busy.release()
    else:
        found.disposed = True  # its request closes it when done


def _database_error(engine: Engine, exc: BaseException) -> bool:
    """An error of the database or its driver (the hot path runs statements on the driver)."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None)
    return isinstance(exc, DBAPIError) or (dbapi is not None and isinstance(exc, dbapi.Error))


@contextlib.contextmanager
def connect(kept: Kept) -> Iterator[Hot]:
    """A connection for one hot-path request: the one this process keeps, when no other
    thread of it is using it, else one from the pool. Checking a connection out of the pool
    and back (and resetting it) cost about a tenth of a rotation's work besides the
    decryption; the kept one is checked out once, and so is its write lock's descriptor.
    What the request leaves open is ended when it is done (as the pool's reset does); a
    connection that failed under it is dropped, and the next request opens another."""
    if kept.pid != os.getpid():
        kept.forked()
    engine = kept.engine
    if not kept.busy.acquire(blocking=False):
        with engine.connect() as conn:
            yield Hot(conn, kept.lock_path)
        return
    try:
        if kept.conn is not None and not kept.conn.closed and not kept.conn.invalidated:
            _check_alive(kept)
        if kept.conn is None or kept.conn.closed or kept.conn.invalidated:
            kept.conn = engine.connect()
        if kept.fd < 0 and engine.dialect.name == "sqlite":
            kept.fd = _open_lock(kept.lock_path)
        conn = kept.conn
        try:
            yield Hot(conn, kept.fd if kept.fd >= 0 else kept.lock_path)
        except BaseException as exc:
            if _database_error(engine, exc):
                kept.close()  # the next request opens a new one
            raise
        finally:
            if kept.conn is not None:
                try:
                    end_read(conn)
                except Exception as exc:
                    if not _database_error(engine, exc):
                        raise
                    kept.close()
            if kept.disposed:  # the engine was disposed while this request used it
                kept.disposed = False
                kept.close()
            kept.used = time.monotonic()
    finally:
        kept.busy.release()


# A kept PostgreSQL connection idle this long is pinged before it is used, as the pool's
# pre-ping would (a restarted server, a dropped session): under load it never is.
PING_AFTER = 5.0


def _check_alive(kept: Kept) -> None:
    engine = kept.engine
    if engine.dialect.name == "sqlite" or time.monotonic() - kept.used < PING_AFTER:
        return
    assert kept.conn is not None
    try:
        dbapi = kept.conn.connection.dbapi_connection
        alive = dbapi is not None and engine.dialect.do_ping(dbapi)
    except Exception as exc:
        if not _database_error(engine, exc):
            raise
        alive = False
    if not alive:
        kept.close()  # a new one is opened for this request
