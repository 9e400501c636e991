"""``run/ams.lock``: held by ``ams serve`` for as long as it runs.

An advisory ``flock`` (released by the kernel if the process dies, so a crash never leaves
a stale lock) plus the holder's pid written inside, so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ams.errors import ServiceRunning

__all__ = ["ServiceLock", "service_pid"]


class ServiceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = service_pid(self.path)
            who = f" (pid {pid})" if pid else ""
            raise ServiceRunning(
                f"`ams serve` is already running on this home{who}: stop it first, or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    @property
    def fd(self) -> int | None:
        """The lock's descriptor while it is held (a forked worker closes its copy, so that the
        lock ends with the process that took it, ams.api.supervisor)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ServiceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def service_pid(path: Path) -> int | None:
    """The pid of the running ``ams serve`` on this lock file, or None when none runs."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(raw) if raw.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
