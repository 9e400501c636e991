"""The instance home (AMS_HOME): where each file lives, and how files are written safely."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ams.errors import BadInput, NotWritable

__all__ = ["Home", "atomic_write", "ensure_private_dir", "new_home_id", "resolve_home"]


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "ams.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ams.db"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def service_key_file(self) -> Path:
        return self.keys_dir / "service.key"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "ams.lock"

    def layout(self) -> list[Path]:
        """Every folder of an instance, created 0700 by ``ams init``."""
        return [
            self.config_dir,
            self.config_dir / "templates",
            self.config_dir / "scripts",
            self.data_dir,
            self.keys_dir,
            self.backups_dir,
            self.snapshots_dir,
            self.run_dir,
        ]

    def looks_initialised(self) -> bool:
        return self.config_file.exists()


def new_home_id() -> str:
    """A new home identity, "hm_" + 16 hex digits: given at `ams init` and to the home a
    backup is restored into when it held no instance (docs/formats.md, "Home identity")."""
    return "hm_" + secrets.token_hex(8)


def resolve_home(option: Path | None) -> Home:
    """``--home`` when given, else ``AMS_HOME``; one of the two is required."""
    raw: str | Path | None = option
    if raw is None:
        raw = os.environ.get("AMS_HOME") or None
    if raw is None:
        raise BadInput("no AMS home given: pass --home DIR or set AMS_HOME")
    root = Path(raw).expanduser().absolute()
    where = "--home" if option is not None else "AMS_HOME"
    # A file where the instance folder should be: say so before any command looks inside
    # (a lock, a restore, `ams init`), rather than "no instance here, run ams init".
    blocker: Path | None = None
    try:
        blocker = root if root.exists() and not root.is_dir() else None
        if blocker is None and not root.exists():
            blocker = next((p for p in root.parents if p.exists() and not p.is_dir()), None)
        readable = not root.is_dir() or os.access(root, os.R_OK | os.X_OK)
    except PermissionError:
        readable = False
    if blocker is not None:
        named = f"{where} {root}" if blocker == root else f"{where} {root}: {blocker}"
        raise BadInput(f"{named} is a file, not a folder; give the instance folder")
    if not readable:
        raise BadInput(f"{where} {root} cannot be read: permission denied; run as the user that owns it")
    return Home(root)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700, or make sure it already is 0700."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except PermissionError as exc:
        raise NotWritable(
            f"cannot create {path}: permission denied; choose a folder you can write to"
        ) from exc
    except OSError as exc:
        raise NotWritable(f"cannot create {path}: {exc.strerror}") from exc


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` through a temporary file, fsync, rename, fsync the folder.

    A reader sees the old content or the new, never a mix; a crash leaves no partial file.
    With ``replace=False`` an existing ``path`` is never replaced: the temporary file is
    hard-linked to ``path``, which fails if it exists, and then nothing changes and False is
    returned. (On a file system without hard links the check and the rename are two steps.)
    """
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except PermissionError as exc:
        raise NotWritable(f"cannot write in {directory}: permission denied") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        elif not _link_new(tmp, path):
            os.unlink(tmp)
            return False
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return True


def _link_new(tmp: str, path: Path) -> bool:
    """Give ``tmp`` the name ``path`` unless ``path`` exists; False when it does."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        if path.exists():  # no hard links here (some network and FAT file systems)
            return False
        os.replace(tmp, path)
        return True
    os.unlink(tmp)
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
