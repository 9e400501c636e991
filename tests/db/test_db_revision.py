"""ams.db.revision: the schema revision needed and the one a database holds, without Alembic."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from ams.db import migrate
from ams.db.engine import make_engine, sqlite_url
from ams.db.revision import HEAD_REVISION, current_revision
from ams.errors import DatabaseUnreadable, SchemaMismatch
from ams.home import Home
from ams.instance import Instance, open_instance
from conftest import run_ams


def _alembic_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_head_revision_is_the_head_of_the_migration_scripts() -> None:
    # Adding a migration means updating HEAD_REVISION in ams/db/revision.py.
    assert migrate.script_head() == HEAD_REVISION
    assert migrate.head_revision() == HEAD_REVISION
    assert HEAD_REVISION in migrate.known_revisions()


def test_reads_what_alembic_reads_at_every_step(tmp_path: Path) -> None:
    path = tmp_path / "ams.db"
    engine = make_engine(sqlite_url(path, create=True))
    try:
        assert current_revision(engine) is None  # no version table
        assert _alembic_revision(engine) is None
        for revision in sorted(migrate.known_revisions()):
            migrate.upgrade(engine, revision)
            assert current_revision(engine) == _alembic_revision(engine) == revision
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM alembic_version")
        assert current_revision(engine) is None
        assert _alembic_revision(engine) is None
    finally:
        engine.dispose()


def test_several_recorded_revisions_are_refused(instance: Instance) -> None:
    with instance.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('0004_directories')")
    with pytest.raises(SchemaMismatch, match="several schema revisions"):
        current_revision(instance.engine)


def test_an_older_schema_asks_for_db_upgrade_which_works(instance: Instance) -> None:
    home = instance.home
    migrate.downgrade(instance.engine, "0004_directories")
    instance.close()
    with pytest.raises(SchemaMismatch) as caught:
        open_instance(home)
    assert str(caught.value) == (
        f"the database has the older schema revision 0004_directories (this AMS needs {HEAD_REVISION}): "
        "run `ams db upgrade` (take a backup first)"
    )
    result = run_ams("db", "upgrade", "--json", home=home.root)
    assert result.returncode == 0, result.stderr
    assert '"to": "' + HEAD_REVISION + '"' in result.stdout
    reopened = open_instance(home)
    try:
        assert current_revision(reopened.engine) == HEAD_REVISION
    finally:
        reopened.close()


def test_a_newer_schema_names_the_version(instance: Instance) -> None:
    with instance.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    home = instance.home
    instance.close()
    with pytest.raises(SchemaMismatch) as caught:
        open_instance(home)
    assert str(caught.value).startswith(
        "the database has schema revision 9999_future, written by a newer AMS than "
    )


def test_a_database_without_a_schema_is_unreadable(instance: Instance) -> None:
    home: Home = instance.home
    instance.close()
    home.sqlite_path.unlink()
    sqlite3.connect(home.sqlite_path).close()  # an empty database file
    with pytest.raises(DatabaseUnreadable, match="holds no AMS schema"):
        open_instance(home)


def test_reads_what_alembic_reads_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        assert current_revision(engine) is None
        assert _alembic_revision(engine) is None
        migrate.upgrade(engine)
        assert current_revision(engine) == _alembic_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()
