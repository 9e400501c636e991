"""``ams backup restore``: everything verified first, the old state saved, an atomic swap.

Order of work, and why:

1. Refuse while ``ams serve`` runs (its pid named); hold the service lock meanwhile.
2. Find the backup's master key: the instance's own when it is the same key, else the
   recovery password (checked before anything is written).
3. Unpack into ``.restore/staging``: seal, sums, every payload chunk, safe paths, the
   database's instance id, fingerprint and schema; migrate the staged copy forward.
4. Wrap the master key for this machine's service key (a new key when the recovery
   password was needed), write a ``pre-restore`` backup of the current state, and record
   both in the staged database, with what the restore does around the data (below) and a
   catalog reconciled with what the backup folders hold (ams.backup.catalog.rescan_sqlite:
   the restored catalog is as old as the backup).
5. Swap ``data``, ``config`` and ``snapshots`` under the journal (ams.backup.journal).

What a restore does around the data (DESIGN.md section 8), decided in step 4 and written
into the staged database with the 1503 event:

- The recovery password: when the backup holds the master key this instance already has,
  the newer of the two recovery wrappings stays (the password the administrator set
  last). Otherwise the backup's is in force from now on, and the restore's output, its
  event and ``ams status`` say so, with the date it was set.
- The home's identity (``instance.home_id``): kept by a restore over an instance, new for
  a home that held none. When the backup was written by another home, its schedule is
  paused until the administrator confirms or changes the destination, and retention
  never deletes that home's archives (ams.backup.schedule.prune).

Any failure before the journal's commit puts every folder back and removes what was
written, so the instance is exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ams import audit
from ams.backup import catalog, journal
from ams.backup.archive import ArchiveReader
from ams.backup.create import BackupResult, create_backup
from ams.backup.staging import (
    PasswordSource,
    install_service_wrapping,
    master_key_for,
    service_wrapping_opens,
    stage_archive,
    stage_service_key,
)
from ams.clock import Clock, as_utc, clock_from_env
from ams.config import load_settings
from ams.db import migrate, sqlite
from ams.db.sqlite import db_time
from ams.errors import (
    AMSError,
    BadInput,
    DatabaseUnreadable,
    RestoreFailed,
    SchemaMismatch,
    ServiceRunning,
)
from ams.home import Home, ensure_private_dir, fsync_dir, new_home_id
from ams.lock import ServiceLock, service_pid
from ams.security.service_key import RECOVERY, ServiceKeySource

if TYPE_CHECKING:
    from ams.backup.pg import PostgresRestore
    from ams.instance import Instance

__all__ = ["RestoreResult", "resolve_interrupted", "restore_backup"]


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    home: Path
    created_at: str
    instance_id: str
    fingerprint: str
    unlocked_with: str
    pre_restore: str | None
    pre_restore_skipped: str | None
    migrated_from: str | None
    new_service_key: bool
    resolved_interrupted: str | None
    database: str = "sqlite"
    recovery_password: dict[str, Any] | None = None
    home_id: str | None = None
    from_home_id: str | None = None
    schedule_paused: str | None = None
    catalog: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "home": str(self.home),
            "backup_created_at": self.created_at,
            "instance_id": self.instance_id,
            "master_key_fingerprint": self.fingerprint,
            "unlocked_with": self.unlocked_with,
            "pre_restore_backup": self.pre_restore,
            "pre_restore_skipped": self.pre_restore_skipped,
            "migrated_from": self.migrated_from,
            "new_service_key": self.new_service_key,
            "resolved_interrupted_restore": self.resolved_interrupted,
            "database": self.database,
            "recovery_password": self.recovery_password,
            "home_id": self.home_id,
            "backup_home_id": self.from_home_id,
            "schedule_paused": self.schedule_paused,
            "catalog": self.catalog,
        }


def resolve_interrupted(
    home: Home, clock: Clock | None = None, actor: str = "ams", *, locked: bool = False
) -> str | None:
    """Finish or undo a restore a crash interrupted (see ams.backup.journal); audit it (1506).

    Only when nothing holds the service lock (a running restore holds it too), unless the
    caller holds it itself (``locked``).
    """
    if not home.root.exists() or (not locked and service_pid(home.lock_file) is not None):
        return None
    action = journal.resume(home)
    if action is None:
        return None
    from ams.instance import open_instance

    with contextlib.suppress(AMSError):
        instance = open_instance(home, clock or clock_from_env(), check_schema=False)
        try:
            with instance.transaction() as session:
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.RESTORE_INTERRUPTED_RESOLVED,
                    actor=actor,
                    details={"action": action},
                )
            catalog.clean_leftovers(instance, actor)
        finally:
            instance.close()
    return action


def _refuse_if_running(home: Home) -> None:
    pid = service_pid(home.lock_file)
    if pid is not None:
        raise ServiceRunning(
            f"`ams serve` is running on {home.root} (pid {pid}): stop it, then restore; nothing was changed"
        )


def _open_current(home: Home, clock: Clock) -> tuple[Instance | None, str | None]:
    """The current instance, or None with the reason it cannot make a pre-restore backup."""
    if not home.looks_initialised():
        if home.root.exists() and any(p.name != ".restore" for p in home.root.iterdir()):
            raise BadInput(
                f"{home.root} is not empty and holds no AMS instance: restore into an empty folder "
                "or an instance"
            )
        return None, "the home held no instance"
    from ams.instance import open_instance

    try:
        instance = open_instance(home, clock, check_schema=False)
    except (DatabaseUnreadable, SchemaMismatch) as exc:
        return None, f"the current database cannot be opened ({exc.message})"
    if instance.keyring.try_service_unlock() != "unlocked":
        return instance, "the current instance's master key is locked, so its state could not be encrypted"
    return instance, None


def _embedded_or(url: str) -> str:
    return "" if url.strip() in ("", "sqlite") else url.strip()


def _check_target_url(home: Home, url: str) -> str | None:
    """``--database-url``: only for an empty home; "" or "sqlite" is the embedded database.

    Into a home that holds an instance, only the database it already keeps is accepted (the
    same command run again after a restore into a new home was interrupted once the home was
    in place): the restore is then in place, and None is returned.
    """
    if home.looks_initialised():
        try:
            current: str | None = _target_url(home, "")
        except AMSError:
            current = None
        if current is not None and _embedded_or(current) == _embedded_or(url):
            return None
        raise BadInput(
            f"{home.root} holds an instance: its database is where it keeps it; --database-url is "
            "for restoring into an empty home"
        )
    if url in ("", "sqlite"):
        return ""
    if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise BadInput("--database-url takes a postgresql:// URL, or `sqlite` for the embedded database")
    return url


def _keep_database_setting(home: Home, staged_toml: Path, option: str | None) -> str:
    """The restored config keeps the home's own ``[database] url`` (not the backup's).

    Returns the url now written in the staged config: the current config's, or for an empty
    home ``option`` ("" for the embedded database).
    """
    url = option or ""
    if home.config_file.is_file():
        try:
            url = str(tomllib.loads(home.config_file.read_text("utf-8")).get("database", {}).get("url", ""))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
            url = ""
    text = staged_toml.read_text("utf-8")
    if load_settings(staged_toml).database.url == url and "AMS_DATABASE__URL" not in os.environ:
        return url  # already so: the file stays byte for byte as backed up
    line = f"url = {_toml_string(url)}"
    section = re.search(r"(?m)^\[database\][ \t]*$", text)
    if section is None:
        text = text.rstrip("\n") + f"\n\n[database]\n{line}\n"
    else:
        end = re.search(r"(?m)^\[", text[section.end() :])
        body_end = section.end() + (end.start() if end else len(text) - section.end())
        body = text[section.end() : body_end]
        if re.search(r"(?m)^[ \t]*url[ \t]*=", body):
            body = re.sub(r"(?m)^[ \t]*url[ \t]*=.*$", lambda _m: line, body, count=1)
        else:
            body = "\n" + line + body
        text = text[: section.end()] + body + text[body_end:]
    staged_toml.write_text(text, "utf-8")
    load_settings(staged_toml)  # still valid TOML and settings
    return url


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _target_url(home: Home, config_url: str) -> str:
    """Where the database goes: a PostgreSQL URL, or "" for the embedded database.

    The environment's AMS_DATABASE__URL wins over the file, as when the instance is opened.
    """
    if home.config_file.is_file():
        return load_settings(home.config_file).database.url
    return config_url


def _record_in_staged(
    db_path: Path,
    clock: Clock,
    actor: str,
    backup_id: str,
    archive: Path | str,
    pre: BackupResult | None,
    migrated_from: str | None,
    new_key: bool,
    restore_id: str,
    around: _Around,
    home: Home,
    instance_id: str,
    master_key: bytes,
) -> None:
    conn = sqlite.connect(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        _apply_around(conn, around, clock)
        if pre is not None:
            catalog.add_complete_sqlite(conn, pre)
            audit.record_sqlite(
                conn,
                clock,
                audit.Event.BACKUP_CREATED,
                actor=actor,
                target=pre.backup_id,
                details=catalog.created_details(pre),
            )
        # The restored catalog is as old as the backup: true to the folders again.
        found = catalog.rescan_sqlite(conn, home, instance_id, master_key)
        around.rescan = found.to_dict()
        audit.record_sqlite(
            conn,
            clock,
            audit.Event.BACKUP_CATALOG_RESCANNED,
            actor=actor,
            details={**around.rescan, "restore_id": restore_id},
        )
        if around.paused:
            audit.record_sqlite(
                conn,
                clock,
                audit.Event.BACKUP_SCHEDULE_PAUSED,
                actor=actor,
                details={
                    "destination": around.destination,
                    "from_home": around.from_home_id,
                    "home": around.home_id,
                    "reason": around.paused,
                },
            )
        if migrated_from:
            audit.record_sqlite(
                conn,
                clock,
                audit.Event.SCHEMA_UPGRADED,
                actor=actor,
                details={"from": migrated_from, "to": migrate.head_revision()},
            )
        audit.record_sqlite(
            conn,
            clock,
            audit.Event.BACKUP_RESTORED,
            actor=actor,
            target=backup_id,
            details={
                "restore_id": restore_id,
                "file": str(archive),
                "pre_restore": pre.backup_id if pre else None,
                "migrated_from": migrated_from,
                "new_service_key": new_key,
                "recovery_password": around.recovery,
                "home_id": around.home_id,
                "backup_home_id": around.from_home_id,
                "schedule_paused": around.paused,
            },
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


RECOVERY_NOTICE = (
    "the recovery password is now the one in use on {date}; set a new one with "
    "`ams security recovery-password set`"
)


@dataclass
class _Around:
    """What the restore does around the data: the recovery wrapping in force, the home's
    identity, the schedule."""

    home_id: str
    from_home_id: str | None
    recovery: dict[str, Any]
    keep_wrapping: tuple[str, datetime] | None  # the current recovery wrapping, to keep
    paused: str | None
    destination: str | None
    rescan: dict[str, Any] | None = None


def _recovery_row(conn: sqlite3.Connection) -> tuple[str, datetime] | None:
    row = conn.execute(
        "SELECT wrapping, created_at FROM master_key_wrappings WHERE kind = ?", (RECOVERY,)
    ).fetchone()
    return (row[0], as_utc(datetime.fromisoformat(row[1]))) if row else None


def _decide_around(db_path: Path, current: Instance | None, manifest: Any) -> _Around:
    """Decide (from the staged database and the current instance) what :class:`_Around` says."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        staged = _recovery_row(conn)
        from_home = conn.execute("SELECT home_id FROM instance").fetchone()[0]
        row = conn.execute("SELECT destination FROM backup_schedule WHERE id = 1").fetchone()
        destination = row[0] if row else None
    finally:
        conn.close()
    current_home: str | None = None
    mine: tuple[str, datetime] | None = None  # the current recovery wrapping, same master key
    previous: datetime | None = None
    if current is not None:
        from ams.db.models import KeyWrapping

        try:
            current_home = current.home_id
            with current.session() as session:
                wrapping = session.get(KeyWrapping, RECOVERY)
                if wrapping is not None:
                    previous = as_utc(wrapping.created_at)
                    if (
                        current.id == manifest.instance_id
                        and current.keyring.fingerprint == manifest.fingerprint
                    ):
                        mine = (wrapping.wrapping, previous)
        except Exception:  # noqa: BLE001 - an unreadable current state: treated as none
            current_home, mine, previous = None, None, None
    home_id = current_home or new_home_id()
    staged_at = staged[1] if staged else None
    keep = None
    in_force: datetime | None
    if mine is not None and (staged is None or mine[0] == staged[0]):
        outcome, in_force = "unchanged", mine[1]
        keep = mine if staged is None else None
    elif mine is not None and staged_at is not None and mine[1] > staged_at:
        outcome, in_force, keep = "kept", mine[1], mine
    else:
        outcome, in_force = "from-backup", staged_at
    when = in_force.isoformat() if in_force else "an unknown date"
    recovery = {
        "outcome": outcome,
        "set_at": in_force.isoformat() if in_force else None,
        "previous_set_at": previous.isoformat() if previous else None,
        "notice": RECOVERY_NOTICE.format(date=when) if outcome == "from-backup" else None,
    }
    paused = None
    if from_home != home_id:
        where = destination or "the backups/ folder of its own home"
        paused = (
            f"this home was restored from a backup of another home ({from_home or 'unknown'}), whose "
            f"schedule sent backups to {where}: confirm that destination, or choose this home's own, with "
            "`ams backup schedule set --dest DIR`; until then backups go to this home's backups/ folder "
            "and retention never deletes the other home's"
        )
    return _Around(home_id, from_home, recovery, keep, paused, destination)


def _apply_around(conn: sqlite3.Connection, around: _Around, clock: Clock) -> None:
    """Write :class:`_Around` into the staged database (inside the caller's transaction)."""
    conn.execute("UPDATE instance SET home_id = ?", (around.home_id,))
    if around.keep_wrapping is not None:
        wrapping, set_at = around.keep_wrapping
        conn.execute("DELETE FROM master_key_wrappings WHERE kind = ?", (RECOVERY,))
        conn.execute(
            "INSERT INTO master_key_wrappings (kind, wrapping, key_source, created_at)"
            " VALUES (?, ?, NULL, ?)",
            (RECOVERY, wrapping, db_time(set_at)),
        )
    if around.paused:
        if conn.execute("SELECT 1 FROM backup_schedule WHERE id = 1").fetchone() is None:
            conn.execute(
                "INSERT INTO backup_schedule (id, at_time, retain_days, consecutive_failures, failures_total)"
                " VALUES (1, ?, ?, 0, 0)",
                (catalog.SCHEDULE_DEFAULT_AT, catalog.SCHEDULE_DEFAULT_RETAIN_DAYS),
            )
        conn.execute(
            "UPDATE backup_schedule SET paused_reason = ?, updated_at = ? WHERE id = 1",
            (around.paused, db_time(clock.now())),
        )


def _migrate_staged(db_path: Path, revision: str) -> str | None:
    if revision == migrate.head_revision():
        return None
    from ams.db.engine import make_engine, sqlite_url

    engine = make_engine(sqlite_url(db_path, create=False))
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return revision


def restore_backup(
    archive: Path,
    home: Home,
    *,
    actor: str,
    password: PasswordSource | None = None,
    clock: Clock | None = None,
    progress: Callable[[int], None] | None = None,
    database_url: str | None = None,
    source: str | None = None,
) -> RestoreResult:
    """Restore ``archive`` into ``home``.

    ``source``: where the archive came from, for event 1503 (an ``s3://`` URL, when
    :mod:`ams.backup.remote` staged the object in a file), instead of the file's path.

    The database goes where the home's instance keeps it (its ``database.url``). Into an
    empty home it goes into the embedded database, or onto PostgreSQL at ``database_url``.
    """
    clock = clock or clock_from_env()
    _refuse_if_running(home)
    if database_url is not None:
        database_url = _check_target_url(home, database_url)
    lock: ServiceLock | None = None
    created_lock = False
    if home.run_dir.is_dir():
        created_lock = not home.lock_file.exists()
        lock = ServiceLock(home.lock_file)
        lock.acquire()  # a serve started now waits for us; one that won the race is named
    try:
        resolved = resolve_interrupted(home, clock, actor, locked=True)
        with ArchiveReader(archive) as reader:
            reader.check_manifest_sum()
            current, skipped = _open_current(home, clock)
            try:
                master_key, via = master_key_for(reader, current, password)
            except BaseException:
                if current is not None:
                    current.close()
                raise
            return _restore(
                reader,
                source or archive,
                home,
                current,
                skipped,
                master_key,
                via,
                actor,
                clock,
                progress,
                resolved,
                database_url,
            )
    finally:
        if lock is not None:
            lock.release()
            if created_lock:
                with contextlib.suppress(OSError):
                    home.lock_file.unlink()


def _restore(
    reader: ArchiveReader,
    archive: Path | str,
    home: Home,
    current: Instance | None,
    skipped: str | None,
    master_key: bytes,
    via: str,
    actor: str,
    clock: Clock,
    progress: Callable[[int], None] | None,
    resolved: str | None,
    database_url: str | None,
) -> RestoreResult:
    manifest = reader.manifest
    created_root = not home.root.exists()
    pre: BackupResult | None = None
    abort_key: Callable[[], None] = lambda: None  # noqa: E731
    committed = False
    onto_pg: PostgresRestore | None = None
    db_committed = False  # past it, only going forward is right (the journal finishes it)
    target_url = ""
    restore_id = "rs_" + secrets.token_hex(8)
    try:
        if created_root:
            ensure_private_dir(home.root)
        work = journal.work_dir(home)
        work.mkdir(mode=0o700)
        if created_root:
            journal.note_created_home(home)
        staging = work / "staging"
        staging.mkdir(mode=0o700)
        staged = stage_archive(reader, master_key, staging, progress, check_pages=False)
        migrated_from = _migrate_staged(staged.db_path, staged.revision)

        new_key = via != "instance"
        commit_key: Callable[[], None] = lambda: None  # noqa: E731
        if new_key:
            # Staged in the work folder: a crash leaves it there, and the journal removes it
            # with the folder (rolled back) or puts it in place (finished).
            service_key, key_kind, commit_key, abort_key = stage_service_key(home, work)
        else:
            source = ServiceKeySource(home)
            existing = source.read()
            assert existing is not None  # the instance was unlocked with it
            service_key, key_kind, commit_key = existing, source.kind, (lambda: None)
        if new_key or not service_wrapping_opens(staged.db_path, service_key, manifest.instance_id):
            install_service_wrapping(
                staged.db_path, master_key, manifest.instance_id, service_key, key_kind, clock.now()
            )
        around = _decide_around(staged.db_path, current, manifest)
        if current is not None and skipped is None:
            pre = create_backup(
                current,
                dest=catalog.default_destination(current),
                kind="pre-restore",
                actor=actor,
                record=False,
            )
        if current is not None:
            current.close()
            current = None
        _record_in_staged(
            staged.db_path,
            clock,
            actor,
            manifest.backup_id,
            archive,
            pre,
            migrated_from,
            new_key,
            restore_id,
            around,
            home,
            manifest.instance_id,
            master_key,
        )
        config_url = _keep_database_setting(home, staged.root / "config" / "ams.toml", database_url)
        target_url = _target_url(home, config_url)
        if target_url:
            from ams.backup.pg import PostgresRestore

            onto_pg = PostgresRestore(staged.db_path, target_url)
            for leftover in staged.db_path.parent.iterdir():  # the rows are in PostgreSQL now
                leftover.unlink()
            pg = onto_pg

            def commit_database() -> None:
                nonlocal db_committed
                pg.commit()
                db_committed = True

            journal.swap(home, commit_database, restore_id)
        else:
            journal.swap(home)
        committed = True
        commit_key()
        journal.finish(home)
        for folder in home.layout():
            ensure_private_dir(folder)
    except BaseException as exc:
        if onto_pg is not None and not db_committed:
            onto_pg.rollback()
        if not committed and not db_committed:
            _undo(home, created_root, abort_key, pre)
        elif not committed:
            # The database already holds the backup: finish the rest rather than undo it.
            with contextlib.suppress(Exception):
                commit_key()
                journal.finish(home)
        if isinstance(exc, AMSError) or not isinstance(exc, Exception):
            raise
        raise RestoreFailed(
            f"the restore failed ({_reason(exc)}); the instance was left exactly as it was"
        ) from exc
    finally:
        if current is not None:
            current.close()
    return RestoreResult(
        backup_id=manifest.backup_id,
        home=home.root,
        created_at=manifest.created_at.isoformat(),
        instance_id=manifest.instance_id,
        fingerprint=manifest.fingerprint,
        unlocked_with=via,
        pre_restore=str(pre.path) if pre else None,
        pre_restore_skipped=skipped,
        migrated_from=migrated_from,
        new_service_key=new_key,
        resolved_interrupted=resolved,
        database=_database_label(target_url),
        recovery_password=around.recovery,
        home_id=around.home_id,
        from_home_id=around.from_home_id,
        schedule_paused=around.paused,
        catalog=around.rescan,
    )


def _database_label(url: str) -> str:
    if not url:
        return "sqlite"
    from ams.db.engine import describe_url

    return f"postgresql {describe_url(url)}"


def _reason(exc: BaseException) -> str:
    """One line about a failure; for a database error the driver's message only (SQLAlchemy's
    own text would repeat the statement and its parameters, blobs and all)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _undo(home: Home, created_root: bool, abort_key: Callable[[], None], pre: BackupResult | None) -> None:
    with contextlib.suppress(Exception):
        abort_key()
    journal.rollback(home)
    if pre is not None:
        with contextlib.suppress(OSError):
            pre.path.unlink()
            fsync_dir(pre.path.parent)
    if created_root:
        shutil.rmtree(home.root, ignore_errors=True)
