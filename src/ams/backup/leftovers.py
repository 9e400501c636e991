"""What a crashed backup leaves in a destination folder, and removing it safely.

A backup works in a scratch folder ``.bk_<id>.<random>.work/`` and writes the archive to a
temporary ``.<name>.amsbak.<random>.tmp`` beside it (ams.backup.create); both are removed
when it ends, however it ends, unless the process dies (a crash, a kill, the power). The
writer holds an exclusive ``flock`` on each for as long as it works; the kernel releases it
when the process dies. :func:`clean` removes only what nobody holds: a leftover, never the
work of a backup still running (the service's scheduled one, say).

Called by the next command that can see the folder: every command that opens a home
cleans its ``backups/`` (:func:`clean_home`, no database needed); the command that
resolves an interrupted restore and ``ams serve`` at start also clean the schedule's
destination (:func:`ams.backup.catalog.clean_leftovers`, audited); the next backup into a
folder, a restore and ``ams backup list --rescan`` clean the folders they use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

__all__ = ["clean", "hold", "is_leftover"]

if TYPE_CHECKING:
    from ams.home import Home


def is_leftover(name: str) -> bool:
    """Whether a name is a backup's scratch folder or temporary archive."""
    return (name.startswith(".bk_") and name.endswith(".work")) or (
        name.startswith(".ams-") and ".amsbak." in name and name.endswith(".tmp")
    )


def hold(path: Path, fd: int | None = None) -> int:
    """Lock ``path`` (a scratch folder, or the temporary archive open as ``fd``) for this
    process; returns the descriptor that holds it (close it to let go).

    Raises :class:`FileNotFoundError` when :func:`clean` removed it in the instant between
    its creation and the lock (the caller fails; nothing of value was there yet).
    """
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            raise FileNotFoundError(path)
    except BaseException:
        if own:
            os.close(fd)
        raise
    return fd


def clean(folder: Path) -> list[str]:
    """Remove the leftovers of crashed backups in ``folder``; return their names."""
    removed: list[str] = []
    try:
        names = sorted(e.name for e in os.scandir(folder) if is_leftover(e.name))
    except OSError:
        return removed
    for name in names:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a backup at work
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if not path.exists():
                removed.append(name)
        finally:
            os.close(fd)
    return removed


def clean_home(home: Home) -> list[str]:
    """:func:`clean` on the home's own ``backups/`` folder: one directory listing when there
    is nothing to remove."""
    return clean(home.backups_dir) if home.backups_dir.is_dir() else []
