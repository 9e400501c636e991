"""What verify and restore share: the master key of a backup, and unpacking it into a folder.

The master key comes from the open instance when it is the same key (fingerprints agree),
otherwise from the recovery password, which unwraps the recovery wrapping carried in the
manifest. A staged backup is a folder holding ``data/ams.db``, ``config/`` and
``snapshots/``, checked and ready to be swapped in (or opened for a restore drill).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ams import crypto
from ams.backup.archive import ArchiveReader, extract_payload
from ams.db import migrate
from ams.db.sqlite import db_time
from ams.errors import (
    BackupInvalid,
    BackupUnsupported,
    DecryptionFailed,
    RecoveryPasswordRequired,
    WrongPassword,
)
from ams.home import Home
from ams.security.service_key import RECOVERY, SERVICE, ServiceKeySource, wrapping_aad

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = [
    "PasswordSource",
    "StagedBackup",
    "install_service_wrapping",
    "master_key_for",
    "service_wrapping_opens",
    "stage_archive",
]

PasswordSource = Callable[[str], str]  # given the hint, returns the recovery password


def master_key_for(
    reader: ArchiveReader,
    instance: Instance | None,
    password: PasswordSource | None,
    *,
    writes: bool = True,
) -> tuple[bytes, str]:
    """(the backup's master key, "instance" or "recovery password").

    ``writes``: the caller would have written (a restore), so a wrong password says that
    nothing was; a verify never writes and says only what is wrong.
    """
    manifest = reader.manifest
    if (
        instance is not None
        and instance.keyring.fingerprint == manifest.fingerprint
        and instance.keyring.try_service_unlock() == "unlocked"
    ):
        return instance.keyring.master_key(), "instance"
    hint = manifest.needs_password_hint()
    if password is None:
        raise RecoveryPasswordRequired(
            f"no unlocked instance here holds this backup's master key ({manifest.fingerprint}): "
            f"it needs {hint}; send it with --password-stdin"
        )
    wrapping = manifest.recovery_wrapping()
    secret = password(hint)
    try:
        mk = crypto.unwrap_with_password(wrapping, secret, wrapping_aad(RECOVERY, manifest.instance_id))
    except DecryptionFailed:
        raise WrongPassword(
            f"the recovery password does not open this backup; it needs {hint}"
            + (". Nothing was written" if writes else "")
        ) from None
    if crypto.fingerprint(mk) != manifest.fingerprint:
        raise BackupInvalid(
            "the recovery wrapping in manifest.json holds another master key: the archive was altered"
        )
    return mk, "recovery password"


class StagedBackup:
    def __init__(self, root: Path, revision: str) -> None:
        self.root = root
        self.revision = revision

    @property
    def home(self) -> Home:
        return Home(self.root)

    @property
    def db_path(self) -> Path:
        return self.root / "data" / "ams.db"


def stage_archive(
    reader: ArchiveReader,
    master_key: bytes,
    target: Path,
    progress: Callable[[int], None] | None = None,
    *,
    check_pages: bool = True,
) -> StagedBackup:
    """Check everything and unpack into ``target`` (an empty 0700 folder).

    ``check_pages`` runs SQLite's ``quick_check`` over every page of the database (about as
    long as copying it). The restore drill (``verify --deep``) does; a restore does not: the
    archive's sums, seal and per-chunk authentication already prove the bytes are the ones
    the backup wrote, and the database's identity and schema are still checked.
    """
    reader.check_manifest_sum()
    reader.check_seal(master_key)
    # A drill re-hashes the payload too; a restore relies on the manifest's salt binding.
    stream = reader.payload(master_key, hashed=check_pages)
    extract_payload(stream, target, progress)  # type: ignore[arg-type]
    stream.finish()
    database = target / "database"
    if not (database / "ams.db").is_file() or [p.name for p in database.iterdir()] != ["ams.db"]:
        raise BackupInvalid("the payload holds no database/ams.db, or more than it")
    database.rename(target / "data")
    for folder in ("config", "snapshots"):
        (target / folder).mkdir(mode=0o700, exist_ok=True)
    if not (target / "config" / "ams.toml").is_file():
        raise BackupInvalid("the payload holds no config/ams.toml")
    revision = _check_database(target / "data" / "ams.db", reader, check_pages)
    return StagedBackup(target, revision)


def _check_database(path: Path, reader: ArchiveReader, check_pages: bool) -> str:
    manifest = reader.manifest
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0] if check_pages else "ok"
            if check != "ok":
                raise BackupInvalid(f"the database in the backup is damaged ({check})")
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            instance_id, fingerprint = conn.execute(
                "SELECT id, master_key_fingerprint FROM instance"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupInvalid(f"the database in the backup cannot be read ({exc})") from None
    if instance_id != manifest.instance_id or fingerprint != manifest.fingerprint:
        raise BackupInvalid("the database in the backup is not the one its manifest describes")
    if revision != manifest.schema_revision:
        raise BackupInvalid("the database's schema revision differs from the manifest's")
    if not migrate.is_known(revision):
        raise BackupUnsupported(
            f"the backup has schema revision {revision}, written by a newer AMS: "
            "restore it with that version or newer"
        )
    return str(revision)


def install_service_wrapping(
    db_path: Path, master_key: bytes, instance_id: str, service_key: bytes, key_source: str, now: datetime
) -> None:
    """Wrap the MK for this machine's service key inside a staged database."""
    wrapped = crypto.wrap_with_key(master_key, service_key, wrapping_aad(SERVICE, instance_id))
    conn = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True)
    try:
        with conn:
            conn.execute("DELETE FROM master_key_wrappings WHERE kind = ?", (SERVICE,))
            conn.execute(
                "INSERT INTO master_key_wrappings (kind, wrapping, key_source, created_at)"
                " VALUES (?, ?, ?, ?)",
                (SERVICE, wrapped.to_json(), key_source, db_time(now)),
            )
    finally:
        conn.close()


def service_wrapping_opens(db_path: Path, service_key: bytes, instance_id: str) -> bool:
    """Whether the staged database's service wrapping already opens with this key."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT wrapping FROM master_key_wrappings WHERE kind = ?", (SERVICE,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return False
    try:
        crypto.unwrap_with_key(
            crypto.WrappedKey.from_json(row[0]), service_key, wrapping_aad(SERVICE, instance_id)
        )
    except (DecryptionFailed, KeyError, TypeError, ValueError):
        return False
    return True


def stage_service_key(
    home: Home, folder: Path | None = None
) -> tuple[bytes, str, Callable[[], None], Callable[[], None]]:
    """A new service key for ``home`` (or the provided one), staged (in ``folder`` when
    given): (key, source kind, commit, abort)."""
    source = ServiceKeySource(home)
    key, commit, abort = source.stage_new(folder)
    return key, source.kind, commit, abort
