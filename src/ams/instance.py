"""Create and open an AMS instance: the home, its settings, its database, its master key.

``open_instance`` is the one dependency every interface uses (CLI commands, the API's
``Depends``): it checks the layout, the database and its schema, and tries to unlock the
master key with the service key, then hands back an :class:`Instance`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ams import __version__, audit, crypto
from ams.clock import Clock, clock_from_env
from ams.config import Settings, default_config_text, load_settings
from ams.db import migrate
from ams.db.engine import describe_url, engine_name, make_engine, sqlite_url
from ams.db.models import InstanceRow
from ams.db.revision import HEAD_REVISION, current_revision
from ams.errors import (
    BadInput,
    DatabaseUnreadable,
    InstanceExists,
    InstanceNotFound,
    NotWritable,
    SchemaMismatch,
)
from ams.home import Home, atomic_write, ensure_private_dir, fsync_dir, new_home_id
from ams.lock import service_pid
from ams.security.keyring import Keyring, initial_wrappings
from ams.security.login_slowdown import LoginSlowdown
from ams.security.policy import check_password_strength
from ams.security.service_key import ServiceKeySource, encode_service_key
from ams.security.throttle import AuthThrottle

__all__ = ["InitResult", "Instance", "create_instance", "open_instance"]


class Instance:
    """An open instance: settings, database engine and sessions, clock, keyring."""

    def __init__(self, home: Home, settings: Settings, engine: Engine, clock: Clock) -> None:
        self.home = home
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self._sessionmaker = sessionmaker(engine, expire_on_commit=False)
        self.keyring = Keyring(home, self.session, clock)
        self.keyring.try_service_unlock()
        # Failed authentication, counted in this process's memory (ams.security.throttle).
        self.auth_throttle = AuthThrottle(clock)
        # Failed console logins, which slow the next ones (ams.security.login_slowdown).
        self.login_slowdown = LoginSlowdown(clock)

    @property
    def id(self) -> str:
        return self.keyring.instance_id

    @property
    def home_id(self) -> str | None:
        """This home's identity (ams.home.new_home_id): what the backup catalog records as
        the writer of each archive, so that retention deletes only this home's."""
        with self.session() as session:
            value: str | None = session.scalars(select(InstanceRow.home_id)).one()
            return value

    @property
    def engine_name(self) -> str:
        return engine_name(self.engine)

    def session(self) -> Session:
        return self._sessionmaker()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end of the block, or rolls back on error."""
        with self.session() as session, session.begin():
            yield session

    def service_pid(self) -> int | None:
        return service_pid(self.home.lock_file)

    def close(self) -> None:
        self.engine.dispose()


def database_url(home: Home, settings: Settings, *, create: bool = False) -> str:
    return settings.database.url or sqlite_url(home.sqlite_path, create=create)


def _db_error(url: str, exc: Exception, *, creating: bool = False) -> DatabaseUnreadable:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    if creating:
        advice = "check the --database URL, that the server is running and that the database exists"
    else:
        advice = (
            "check database.url in config/ams.toml, or restore the database with `ams backup restore FILE`"
        )
    return DatabaseUnreadable(f"the database {describe_url(url)} cannot be read ({reason}): {advice}")


def open_instance(home: Home, clock: Clock | None = None, *, check_schema: bool = True) -> Instance:
    if not home.root.is_dir():
        raise InstanceNotFound(
            f"no AMS instance at {home.root}: run `ams init --home {home.root}` first, "
            "or point --home / AMS_HOME at an existing instance"
        )
    if not home.config_file.is_file():
        raise InstanceNotFound(
            f"{home.root} is not an AMS instance (it has no config/ams.toml): "
            "point --home at an instance, or run `ams init` on an empty folder"
        )
    settings = load_settings(home.config_file)
    url = database_url(home, settings)
    if not settings.database.url and not home.sqlite_path.is_file():
        raise DatabaseUnreadable(
            f"the database file {home.sqlite_path} is missing: restore it with `ams backup restore FILE`"
        )
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
        if revision is None:
            raise DatabaseUnreadable(
                f"the database {describe_url(url)} holds no AMS schema: check database.url, "
                "or restore the database with `ams backup restore FILE`"
            )
        if check_schema:
            _check_revision(revision)
        instance = Instance(home, settings, engine, clock or clock_from_env())
    except (DBAPIError, SQLAlchemyError) as exc:
        engine.dispose()
        raise _db_error(url, exc) from exc
    except BaseException:
        engine.dispose()
        raise
    return instance


def _check_revision(revision: str) -> None:
    head = HEAD_REVISION
    if revision == head:
        return
    # Only a mismatch reads the migration scripts (and loads Alembic).
    if revision not in migrate.known_revisions():
        raise SchemaMismatch(
            f"the database has schema revision {revision}, written by a newer AMS than "
            f"{__version__}: install that version or a newer one"
        )
    raise SchemaMismatch(
        f"the database has the older schema revision {revision} (this AMS needs {head}): "
        "run `ams db upgrade` (take a backup first)"
    )


@dataclass(frozen=True)
class InitResult:
    instance_id: str
    home: Path
    fingerprint: str
    engine: str
    revision: str
    recovery_password: str | None  # only when generated, to be shown once
    service_key_source: str


def _check_home_is_free(home: Home) -> None:
    root = home.root
    if root.exists() and not root.is_dir():
        raise BadInput(f"{root} exists and is not a folder: choose another --home")
    if home.looks_initialised():
        raise InstanceExists(f"an AMS instance already exists at {root}; nothing was changed")
    if root.is_dir() and any(root.iterdir()):
        raise InstanceExists(
            f"{root} is not empty and holds no AMS instance; nothing was changed. "
            "Choose an empty or new folder"
        )


def _check_database_is_free(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except (DBAPIError, SQLAlchemyError) as exc:
        raise _db_error(url, exc, creating=True) from exc
    finally:
        engine.dispose()
    if "instance" in tables or "alembic_version" in tables:
        raise InstanceExists(
            f"the database {describe_url(url)} already holds an AMS instance; nothing was "
            "changed. Use an empty database, or restore that instance with `ams backup restore`"
        )


def create_instance(
    home: Home,
    *,
    recovery_password: str | None,
    database_url_option: str = "",
    actor: str,
    clock: Clock | None = None,
    environ: dict[str, str] | None = None,
) -> InitResult:
    """``ams init``: everything is built in a staging folder beside the home and renamed
    into place at the end, so a failure at any step leaves nothing behind."""
    clock = clock or clock_from_env()
    _check_home_is_free(home)
    generated = recovery_password is None
    if recovery_password is None:
        recovery_password = crypto.generate_recovery_password()
    check_password_strength(recovery_password, "recovery password")
    if database_url_option and not database_url_option.startswith(("postgresql", "postgres")):
        raise BadInput(
            f"unsupported database URL {describe_url(database_url_option)!r}: give a "
            "postgresql://user@host/dbname URL, or leave --database out for embedded SQLite"
        )
    if database_url_option:
        _check_database_is_free(database_url_option)

    parent = home.root.parent
    created_parents: list[Path] = []
    probe = parent
    while not probe.exists():
        created_parents.append(probe)
        probe = probe.parent
    try:
        if created_parents:
            ensure_private_dir(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise NotWritable(f"cannot create {home.root}: {parent} is not writable")
        staging = Path(tempfile.mkdtemp(prefix=f".{home.root.name}.init-", dir=parent))
    except PermissionError as exc:
        _remove_created(created_parents)
        raise NotWritable(
            f"cannot create {home.root}: permission denied; choose a folder you can write to"
        ) from exc
    except BaseException:
        _remove_created(created_parents)
        raise

    pg_engine: Engine | None = None
    try:
        stage = Home(staging)
        os.chmod(staging, 0o700)
        for folder in stage.layout():
            ensure_private_dir(folder)
        atomic_write(stage.config_file, default_config_text(database_url_option).encode("utf-8"))

        source = ServiceKeySource(stage, environ)
        service_key = source.read() if not source.writable else None
        if service_key is None:
            service_key = crypto.generate_service_key()
            fd = os.open(stage.service_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode_service_key(service_key))
                handle.flush()
                os.fsync(handle.fileno())

        url = database_url_option or sqlite_url(stage.sqlite_path, create=True)
        engine = make_engine(url)
        if database_url_option:
            pg_engine = engine
        try:
            migrate.upgrade(engine)
            revision = HEAD_REVISION
            master_key = crypto.generate_master_key()
            instance_id = str(uuid.uuid4())
            fingerprint = crypto.fingerprint(master_key)
            now = clock.now()
            wrappings = initial_wrappings(
                master_key, instance_id, service_key, recovery_password, now=now, key_source=source.kind
            )
            with Session(engine) as session, session.begin():
                session.add(
                    InstanceRow(
                        id=instance_id,
                        created_at=now,
                        created_by_version=__version__,
                        master_key_fingerprint=fingerprint,
                        home_id=new_home_id(),
                    )
                )
                session.add_all(wrappings)
                audit.record(
                    session,
                    clock,
                    audit.Event.INSTANCE_CREATED,
                    actor=actor,
                    details={"engine": engine_name(engine), "fingerprint": fingerprint},
                )
                audit.record(session, clock, audit.Event.RECOVERY_PASSWORD_SET, actor=actor)
            engine_label = engine_name(engine)
        finally:
            if not database_url_option:
                engine.dispose()
        if stage.sqlite_path.exists():
            os.chmod(stage.sqlite_path, 0o600)
        if home.root.is_dir():
            os.rmdir(home.root)  # empty (checked above): the staging folder takes its place
        for folder in (stage.keys_dir, stage.data_dir, stage.root):
            fsync_dir(folder)
        os.replace(staging, home.root)
        fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if pg_engine is not None:
            _drop_schema(pg_engine)
        _remove_created(created_parents)
        if isinstance(exc, PermissionError):
            raise NotWritable(f"cannot create {home.root}: permission denied") from exc
        if isinstance(exc, (DBAPIError, SQLAlchemyError)):
            raise _db_error(database_url_option or str(home.sqlite_path), exc, creating=True) from exc
        raise
    finally:
        if pg_engine is not None:
            pg_engine.dispose()

    return InitResult(
        instance_id=instance_id,
        home=home.root,
        fingerprint=fingerprint,
        engine=engine_label,
        revision=revision,
        recovery_password=recovery_password if generated else None,
        service_key_source=ServiceKeySource(home, environ).describe(),
    )


def _drop_schema(engine: Engine) -> None:
    with contextlib.suppress(SQLAlchemyError):
        migrate.downgrade(engine, "base")
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


def _remove_created(paths: list[Path]) -> None:
    for path in paths:  # deepest first
        with contextlib.suppress(OSError):
            path.rmdir()


def instance_row(session: Session) -> InstanceRow:
    return session.scalars(select(InstanceRow)).one()
