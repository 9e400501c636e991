"""Backups of an instance on PostgreSQL, in the same archive format as the embedded database.

A PostgreSQL instance is backed up as a logical copy into a SQLite database with the same
schema (``database/ams.db`` in the payload, exactly as for an embedded instance): every row
of every AMS table, read inside one ``REPEATABLE READ`` read-only transaction, so the copy
is one consistent snapshot while the service keeps writing. Verification, the restore
drill, and restoring onto the embedded database then work unchanged, and a PostgreSQL
backup can be restored on a machine that has no PostgreSQL at all. (Not
``pg_dump``: that would tie every backup to a matching ``pg_dump``/server version, could
not be checked without a server, and could only go back to PostgreSQL.)

Restoring onto PostgreSQL copies the staged database's rows back in ONE transaction that
first deletes every AMS row, then resets the id sequences. Until it commits, nothing changed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Integer, func, select, text
from sqlalchemy.engine import Connection, Engine

from ams.backup.sqlite_image import DatabaseImage, connection_facts
from ams.db import migrate
from ams.db.engine import make_engine, sqlite_url
from ams.db.models import Base
from ams.errors import BackupUnsupported

__all__ = ["PostgresRestore", "marker_present", "open_pg_image"]

_BATCH = 2000


def _copy_rows(source: Connection, target: Connection) -> None:
    for table in Base.metadata.sorted_tables:
        result = source.execution_options(stream_results=True, yield_per=_BATCH).execute(select(table))
        for rows in result.partitions(_BATCH):
            target.execute(table.insert(), [dict(row._mapping) for row in rows])


@contextlib.contextmanager
def open_pg_image(engine: Engine, scratch: Path) -> Iterator[DatabaseImage]:
    """The PostgreSQL database as of one transaction, as a SQLite database file in ``scratch``."""
    copy = scratch / "ams.db"
    target = make_engine(sqlite_url(copy, create=True))
    try:
        with engine.connect() as source:
            source = source.execution_options(isolation_level="REPEATABLE READ")
            with source.begin():
                source.execute(text("SET TRANSACTION READ ONLY"))
                revision = source.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
                migrate.upgrade(target, revision)
                with target.begin() as sink:
                    sink.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    _copy_rows(source, sink)
    finally:
        target.dispose()
    os.chmod(copy, 0o600)
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        facts = connection_facts(conn)
    finally:
        conn.close()
    with open(copy, "rb") as handle:
        yield DatabaseImage(facts, os.fstat(handle.fileno()).st_size, handle.read, "postgresql")


def _reset_sequences(conn: Connection) -> None:
    """After rows were inserted with their ids, each id sequence continues after the largest."""
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, Integer) or column.autoincrement not in (True, "auto"):
                continue
            sequence = conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
            ).scalar()
            if sequence:
                largest = conn.execute(select(func.max(column))).scalar()
                conn.execute(
                    text("SELECT setval(:s, :v, :called)"),
                    {"s": sequence, "v": largest or 1, "called": largest is not None},
                )


class PostgresRestore:
    """The staged database copied into PostgreSQL in one open transaction: commit or roll back.

    The target must hold this AMS's schema (an instance, or an empty database, where the
    migrations create it first; if the restore then fails, they are undone).
    """

    def __init__(self, staged_db: Path, url: str) -> None:
        self.engine = make_engine(url)
        self._created = False
        self._conn: Connection | None = None
        try:
            revision = migrate.current_revision(self.engine)
            if revision is None:
                migrate.upgrade(self.engine)
                self._created = True
            elif revision != migrate.head_revision():
                raise BackupUnsupported(
                    f"the PostgreSQL database holds schema {revision}, this AMS writes "
                    f"{migrate.head_revision()}: run `ams db upgrade`, then restore; nothing was changed"
                )
            self._conn = self.engine.connect()
            self._txn = self._conn.begin()
            for table in reversed(Base.metadata.sorted_tables):
                self._conn.execute(table.delete())
            source_engine = make_engine(sqlite_url(staged_db, create=False))
            try:
                with source_engine.connect() as source:
                    _copy_rows(source, self._conn)
            finally:
                source_engine.dispose()
            _reset_sequences(self._conn)
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        assert self._conn is not None
        self._txn.commit()
        self._created = False
        self._close()

    def rollback(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._txn.rollback()
        if self._created:
            with contextlib.suppress(Exception):
                migrate.downgrade(self.engine, "base")
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self.engine.dispose()


def marker_present(url: str, marker: str) -> bool:
    """Whether the database holds the restore's audit event (so its transaction committed)."""
    from ams.db.models.foundation import AuditEvent

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.details.contains(marker))
            ).scalar_one()
    finally:
        engine.dispose()
    return bool(found)
