"""The thread in ``ams serve`` that runs scheduled backups.

It wakes at most every ``poll`` seconds (sooner when the next run is due), asks
:func:`ams.backup.schedule.run_due` and goes back to sleep. Tests drive ``run_due`` with a
ManualClock instead of sleeping. With PostgreSQL and several nodes sharing one database,
each run first takes a PostgreSQL advisory lock (without waiting): only the node that gets
it backs up, and the others find the run recorded as done when they look next.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ams import audit
from ams.backup import catalog, journal
from ams.backup.offsite_jobs import run_due as offsite_due
from ams.backup.schedule import due_at, paused_reason, run_due
from ams.clock import ManualClock
from ams.db.advisory import one_node
from ams.instance import Instance

__all__ = ["BackupScheduler"]

log = logging.getLogger("ams.backup")


class BackupScheduler:
    def __init__(self, instance: Instance, *, poll: float = 60.0) -> None:
        self.instance = instance
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        # A restore interrupted past the point where the instance opens again (every folder
        # swapped in, or committed) is finished here; earlier states cannot open at all.
        if journal.resume(self.instance.home):
            log.warning("an interrupted restore was found and resolved (see `ams audit list --event 1506`)")
            with self.instance.transaction() as session:
                audit.record(
                    session,
                    self.instance.clock,
                    audit.Event.RESTORE_INTERRUPTED_RESOLVED,
                    actor="service",
                    details={"action": "finished at service start"},
                )
        # What a backup killed with the previous service (or a crashed command) left behind.
        try:
            catalog.clean_leftovers(self.instance, "service")
        except Exception:  # noqa: BLE001 - never keeps the service from starting
            log.exception("the leftovers of crashed backups could not be removed")
        if isinstance(self.instance.clock, ManualClock):
            # In-process tests (a TestClient around an app) move a ManualClock for their own
            # reasons; a backup thread must not act on it behind their back. They call tick().
            return
        self._thread = threading.Thread(target=self._loop, name="ams-backup-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def tick(self) -> dict[str, Any] | None:
        with one_node(self.instance, ADVISORY_LOCK) as mine:
            if not mine:
                return None
            result = run_due(self.instance)
            if result is None:
                # Between runs: retry the copies that failed, and the weekly restore drills.
                offsite_due(self.instance, actor="scheduler")
            if result is not None:
                self.last = result
                if result["ok"]:
                    log.info("scheduled backup written: %s", result["backup"]["path"])
                else:
                    log.error("scheduled backup failed: %s", result["error"])
            return result

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                if paused_reason(self.instance) is not None:
                    wait = self.poll  # until the administrator confirms the destination
                else:
                    wait = (due_at(self.instance) - self.instance.clock.now()).total_seconds()
            except Exception:  # noqa: BLE001 - the scheduler outlives any one failure
                log.exception("the backup scheduler met an error; it tries again later")
                wait = self.poll
            self._stop.wait(max(1.0, min(self.poll, wait)))


# Any constant shared by every node; "AMSB" in ASCII.
ADVISORY_LOCK = 0x414D5342
