"""Paths a user names (files to read, files and folders to write): checked before any work.

Every path argument of every command goes through one of these, so a wrong path is one
line that says what is wrong with it and what to give instead, an exit status from the
error hierarchy, and nothing changed: a missing file is :class:`NotFound`; a folder where a
file is needed (or the reverse), a file in the middle of a path, or a file that cannot be
read is :class:`BadInput`; a folder that cannot be written is :class:`NotWritable`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ams.errors import AlreadyExists, BadInput, NotFound, NotWritable

__all__ = ["check_folder", "check_new_file", "read_file"]


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (so nothing below it can exist)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def read_file(path: Path, what: str, *, limit: int | None = None) -> bytes:
    """The content of a file named on the command line (at most ``limit`` bytes)."""
    try:
        with path.open("rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    except (FileNotFoundError, NotADirectoryError):
        blocker = _file_in_the_way(path)
        if blocker is not None:
            raise BadInput(f"{path}: {blocker} is a file, not a folder; give the path of {what}") from None
        raise NotFound(f"{path} does not exist: give the path of {what}") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a folder: give the path of {what}") from None
    except PermissionError:
        raise BadInput(f"{path} cannot be read: permission denied") from None
    except OSError as exc:
        raise BadInput(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def check_new_file(
    path: Path, option: str, *, example: str, force: bool = False, makes_folders: bool = False
) -> None:
    """Refuse, before any work, a file ``option`` names that could not be written.

    ``example`` is a file name to suggest when ``path`` is a folder. Without ``force`` an
    existing file is refused (nothing is ever replaced by surprise). ``makes_folders``: the
    writer creates missing folders, so only a file in the way is refused.
    """
    if path.is_dir():
        raise BadInput(f"{option} {path} is a folder: give a file name such as {path / example}")
    folder = path.parent
    if not folder.is_dir():
        blocker = folder if folder.exists() else _file_in_the_way(path)
        if blocker is not None:
            raise BadInput(f"{option} {path}: {blocker} is a file, not a folder; choose another {option}")
        if makes_folders:
            return
        raise NotFound(
            f"{option} {path}: the folder {folder} does not exist; create it or choose another {option}"
        )
    if path.exists() and not force:
        raise AlreadyExists(f"{path} exists: choose another {option}, or pass --force to replace it")
    _probe(folder, option)


def check_folder(path: Path, option: str, *, create: bool = False) -> Path:
    """The absolute folder ``option`` names, which this process can write to; a missing one
    is made (0700, with its parents) only with ``create``."""
    from ams.home import ensure_private_dir

    folder = path.expanduser().absolute()
    if not folder.exists():
        blocker = _file_in_the_way(folder)
        if blocker is not None:
            raise BadInput(f"{option} {folder}: {blocker} is a file, not a folder; choose another {option}")
        if not create:
            raise BadInput(
                f"{option} {folder} does not exist: create it, or pass --create to have it made (0700)"
            )
        ensure_private_dir(folder)
    elif not folder.is_dir():
        raise BadInput(f"{option} {folder} is a file, not a folder; give a folder")
    _probe(folder, option)
    return folder


def _probe(folder: Path, option: str) -> None:
    """Create and remove a nameless file in ``folder``: the one test of "can write here" that
    also holds for root, read-only mounts and ACLs."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise NotWritable(
            f"{option}: {folder} cannot be written ({exc.strerror or type(exc).__name__}); "
            "choose a folder this user can write to"
        ) from None
