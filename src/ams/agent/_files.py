"""Private files written atomically: the state file and the file setter's output."""

from __future__ import annotations

from pathlib import Path

from ams.errors import NotWritable
from ams.home import atomic_write

__all__ = ["ensure_private_folder", "write_private"]


def ensure_private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700; an existing folder is left as it is.

    An existing folder may be shared (``/tmp``): changing its mode is not ours to do (the
    state file's caller refuses one open to others instead).
    """
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for level in reversed(missing):
        level.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """``ams.home.atomic_write`` at 0600: readers see the old file or the new one; with
    ``replace=False`` an existing file is kept and False is returned.

    Every failure stays an ``OSError``: the agent's callers say what it means for them
    (the password is set but the state is not saved, the file setter failed).
    """
    try:
        return atomic_write(path, data, 0o600, replace=replace)
    except NotWritable as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise
