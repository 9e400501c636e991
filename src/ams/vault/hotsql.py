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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from ams.db.sqlite import db_time

__all__ = ["Row", "Statement", "as_utc", "end_read", "raw", "writing"]


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


@contextlib.contextmanager
def writing(conn: Connection, lock: Path) -> Iterator[None]:
    """A write transaction of ``conn``, committed at the end of the block (rolled back on an
    exception). On SQLite: ``BEGIN IMMEDIATE`` under the file lock ``lock`` that queues the
    hot path's writers of every worker process (the module's docstring)."""
    fd = -1
    if conn.dialect.name == "sqlite":
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            fd = -1  # no run/ folder to queue in: SQLite's own lock still excludes
        else:
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
        if fd >= 0:
            os.close(fd)  # releases the lock


def end_read(conn: Connection) -> None:
    """End what reads began (psycopg opens a transaction with the first statement)."""
    if conn.in_transaction():
        conn.rollback()
    else:
        raw(conn).rollback()
