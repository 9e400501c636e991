"""The directory jobs ``ams serve`` runs: the restore worker, the daily automatic snapshots
and the scrub of snapshot files.

One thread. It carries out queued restores as soon as :func:`ams.directory.restore.notify`
wakes it (and every ``poll`` seconds in any case, for restores queued by another process),
and every ``auto_check`` seconds checks whether a directory is due its daily snapshot and
reads one snapshot file not read for a day (:func:`ams.directory.snapshots.scrub`).
Tests call :meth:`DirectoryJobs.tick` themselves instead of starting the thread, with a
ManualClock, so nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from ams.directory import restore, snapshots
from ams.instance import Instance

__all__ = ["DirectoryJobs"]

log = logging.getLogger("ams.directory")


class DirectoryJobs:
    def __init__(
        self, instance: Instance, *, poll: float = 5.0, auto_check: timedelta = timedelta(minutes=5)
    ):
        self.instance = instance
        self.poll = poll
        self.auto_check = auto_check
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_auto: datetime | None = None

    def tick(self) -> None:
        """One round: snapshots a dead process left Creating, pending restores, then the
        automatic snapshots and the scrub when due."""
        for snapshot_id in snapshots.resolve_interrupted(self.instance):
            log.warning("snapshot %s was interrupted while it was taken: it is now Failed", snapshot_id)
        for result in restore.run_pending(self.instance):
            if result.state == "failed":
                log.warning(
                    "restore of %s into %s failed: %s", result.snapshot_id, result.directory_id, result.reason
                )
            else:
                log.info(
                    "restored %s into %s (%d entries)",
                    result.snapshot_id,
                    result.directory_id,
                    result.entries,
                )
        now = self.instance.clock.now()
        if self._next_auto is None or now >= self._next_auto:
            self._next_auto = now + self.auto_check
            for taken in snapshots.run_auto_snapshots(self.instance):
                log.info("automatic snapshot %s of %s taken", taken.id, taken.directory_id)
            for damaged in snapshots.scrub(self.instance):
                log.warning(
                    "snapshot %s of %s fails its checksum: it cannot be restored; delete it",
                    damaged.id,
                    damaged.directory_id,
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep the service up; the next round tries again
                log.exception("directory jobs: a round failed")
            self._wake.wait(self.poll)

    def start(self) -> None:
        if self._thread is not None:
            return
        restore.register(self._wake)
        self._thread = threading.Thread(target=self._loop, name="ams-directory-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current round (a restore in progress finishes its batch first)."""
        restore.unregister(self._wake)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
