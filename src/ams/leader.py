"""Which process of ``ams serve`` runs the background jobs (the singletons).

The scheduled backups, the directory jobs (restore worker, automatic snapshots, scrub) and
the audit trail's upkeep must run in exactly one process, however many workers serve
requests (``ams serve --workers N``) and, on PostgreSQL, however many nodes share the
database. Each worker tries to become the *jobs leader* when it starts, and every
:data:`RETRY` seconds after that while it is not:

- on the embedded database, with an exclusive ``flock`` on ``run/jobs.lock`` (the kernel
  releases it when the holder dies, so a crash leaves no stale lock; the holder's pid is
  written inside);
- on PostgreSQL, with a session advisory lock (:data:`ADVISORY_KEY`) held on a connection
  of its own for as long as the worker runs (it ends with the connection).

The leader starts the jobs; when it stops or dies, another worker (or node) takes over at
its next try. The per-run advisory locks of the jobs themselves (ams.db.advisory) stay.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from ams.instance import Instance

__all__ = ["ADVISORY_KEY", "RETRY", "JobsLeader"]

log = logging.getLogger("ams.serve")

ADVISORY_KEY = 0x414D534A  # "AMSJ"
RETRY = 5.0


class JobsLeader:
    """Try to lead; call ``on_elected`` (in a thread of its own when not at once) when this
    process becomes the leader."""

    def __init__(self, instance: Instance, on_elected: Callable[[], None], *, retry: float = RETRY) -> None:
        self.instance = instance
        self.on_elected = on_elected
        self.retry = retry
        self.leading = False
        self._fd: int | None = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try(self) -> bool:
        if self.instance.engine_name == "postgresql":
            conn = self.instance.engine.connect()
            try:
                query = text("SELECT pg_try_advisory_lock(:k)")
                mine = bool(conn.execute(query, {"k": ADVISORY_KEY}).scalar())
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if not mine:
                conn.close()
                return False
            self._conn = conn
            return True
        path = self.instance.home.run_dir / "jobs.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _elect(self) -> bool:
        try:
            won = self._try()
        except Exception:  # noqa: BLE001 - the database may be away for a moment: try later
            log.exception("the jobs lock could not be tried; trying again in %s s", self.retry)
            return False
        if won:
            self.leading = True
            log.info("this worker (pid %d) runs the background jobs", os.getpid())
            self.on_elected()
        return won

    def _loop(self) -> None:
        while not self._stop.wait(self.retry):
            if self._elect():
                return

    def start(self) -> None:
        """Lead now if the lock is free; else keep trying in a thread."""
        if self._elect():
            return
        self._thread = threading.Thread(target=self._loop, name="ams-jobs-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trying (the caller stops the jobs it started), then release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._conn.commit()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        self.leading = False
