"""The schema revision this AMS needs and the one a database holds, without loading Alembic.

Every command that opens an instance compares the two. Asking Alembic costs a few hundred
milliseconds (importing it, then reading every migration script to find the head), so the
head is a constant here and the database's revision is one plain query; Alembic is loaded
only to migrate (``ams.db.migrate``), SQLAlchemy only when a database is asked, so
``HEAD_REVISION`` costs nothing to import. ``tests/db/test_db_revision.py`` fails when a
migration is added without updating ``HEAD_REVISION``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ams.errors import SchemaMismatch

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["HEAD_REVISION", "current_revision"]

HEAD_REVISION = "0012_hotpath"


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or None when it holds no schema.

    Reads what Alembic's ``MigrationContext.get_current_revision`` reads: no version table,
    or an empty one, means no schema.
    """
    from sqlalchemy import text

    with engine.connect() as conn:
        # Alembic's default version table, which ams.db.migrate keeps.
        if not conn.dialect.has_table(conn, "alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        # AMS's migrations never branch: several heads mean something else wrote this table.
        raise SchemaMismatch(
            f"the database records several schema revisions ({', '.join(sorted(rows))}), "
            "which AMS never writes: check database.url, or restore the database with "
            "`ams backup restore FILE`"
        )
    return rows[0] if rows else None
