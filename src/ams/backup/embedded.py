"""The embedded database of a home as a backup source, with plain :mod:`sqlite3`.

``ams backup create`` is a command: before its first byte it would import SQLAlchemy, the
models and the keyring (about half a second here), for a copy that takes a few seconds
(docs/performance.md). On the embedded database it needs none of them: the master key
comes from the service wrapping (:func:`ams.security.service_key.open_service_wrapping`,
the keyring's own rule), the image from :mod:`ams.backup.sqlite_image` as always, and the
catalog row and audit event are two INSERTs (:func:`ams.backup.catalog.add_complete_sqlite`,
:func:`ams.audit.record_sqlite`).

:meth:`EmbeddedSource.open` takes the home only when it is exactly as
:func:`ams.instance.open_instance` would take it, unlocked: a configured PostgreSQL URL, a
schema revision other than this AMS's, a missing or wrong service key, anything unreadable
gives None, and the caller opens the instance instead, which then refuses with the
precise error (or, for PostgreSQL, does the backup).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ams import audit
from ams.backup import catalog
from ams.backup.sqlite_image import DatabaseImage, open_image
from ams.clock import Clock, clock_from_env
from ams.config import load_settings
from ams.db import sqlite
from ams.db.revision import HEAD_REVISION
from ams.errors import AMSError, BackupFailed, DecryptionFailed
from ams.home import Home
from ams.security.service_key import RECOVERY, SERVICE, ServiceKeySource, open_service_wrapping

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


__all__ = ["EmbeddedSource"]


class EmbeddedSource:
    """A :class:`ams.backup.create.BackupSource` on ``data/ams.db``, unlocked."""

    engine_name = "sqlite"

    def __init__(self, home: Home, clock: Clock, conn: sqlite3.Connection, master_key: bytes) -> None:
        self.home = home
        self.clock = clock
        self._conn = conn
        self._master_key = master_key

    @classmethod
    def open(cls, home: Home, clock: Clock | None = None) -> EmbeddedSource | None:
        """The home's embedded database, or None when the instance must be opened instead."""
        if not home.root.is_dir() or not home.config_file.is_file() or not home.sqlite_path.is_file():
            return None
        try:
            if load_settings(home.config_file).database.url:
                return None
            service_key = ServiceKeySource(home).read()
            clock = clock or clock_from_env()
        except AMSError:
            return None
        if service_key is None:
            return None
        try:
            conn = sqlite.connect(home.sqlite_path)
        except sqlite3.Error:
            return None
        try:
            revisions = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
            instances = conn.execute("SELECT id, master_key_fingerprint FROM instance").fetchall()
            wrapping = conn.execute(
                "SELECT wrapping FROM master_key_wrappings WHERE kind = ?", (SERVICE,)
            ).fetchone()
            if revisions != [HEAD_REVISION] or len(instances) != 1 or wrapping is None:
                raise LookupError
            instance_id, fingerprint = instances[0]
            master_key = open_service_wrapping(wrapping[0], service_key, instance_id, fingerprint)
        except (sqlite3.Error, LookupError, DecryptionFailed, TypeError):
            conn.close()
            return None
        return cls(home, clock, conn, master_key)

    def __enter__(self) -> EmbeddedSource:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- BackupSource --------------------------------------------------------------------

    def master_key(self) -> bytes:
        return self._master_key

    def recovery_password_set_at(self) -> datetime | None:
        row = self._conn.execute(
            "SELECT created_at FROM master_key_wrappings WHERE kind = ?", (RECOVERY,)
        ).fetchone()
        return datetime.fromisoformat(row[0]).replace(tzinfo=UTC) if row and row[0] else None

    def default_destination(self) -> Path:
        return catalog.default_destination_sqlite(self._conn, self.home)

    def open_image(self, scratch: Path) -> AbstractContextManager[DatabaseImage]:
        return open_image(self.home.sqlite_path, scratch)

    def record(self, result: catalog.MadeBackup, actor: str) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                catalog.add_complete_sqlite(self._conn, result)
                audit.record_sqlite(
                    self._conn,
                    self.clock,
                    audit.Event.BACKUP_CREATED,
                    actor=actor,
                    target=result.backup_id,
                    details=catalog.created_details(result),
                )
                adopted = catalog.adopt_sqlite(self._conn, result, self._master_key)
                if adopted:
                    audit.record_sqlite(
                        self._conn,
                        self.clock,
                        audit.Event.BACKUP_CATALOG_RESCANNED,
                        actor=actor,
                        details=catalog.adopted_details(result, adopted),
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BackupFailed(
                f"the backup {result.path} was written, but the database did not record it ({exc}); "
                "check the instance with `ams status`"
            ) from None
