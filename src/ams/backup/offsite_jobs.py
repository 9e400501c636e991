"""The offsite work the scheduler does between backups: copies that failed are tried again,
and each target's restore drill runs when it is due.

Its own module because it joins the two directions: :mod:`ams.backup.offsite` (copies up)
and :mod:`ams.backup.remote` (reads back, drills), which must not import each other's way
back to :mod:`ams.backup.create`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ams.backup import offsite
from ams.backup.remote import drill
from ams.clock import as_utc
from ams.errors import AMSError

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = ["RETRY_AFTER", "run_due"]

log = logging.getLogger("ams.backup")

# Between scheduled runs, a failed copy is tried again after this long.
RETRY_AFTER = timedelta(minutes=30)


def run_due(instance: Instance, *, actor: str = "scheduler") -> dict[str, Any]:
    """The scheduler's work between runs: retry copies that failed (after :data:`RETRY_AFTER`)
    and run each target's restore drill when its ``drill_days`` have passed. Never raises."""
    from sqlalchemy import func, select

    from ams.db.models.backups import OffsiteCopy, OffsiteTarget

    done: dict[str, Any] = {"copies": [], "drills": []}
    try:
        now = instance.clock.now()
        with instance.session() as session:
            failed_at = dict(
                session.execute(
                    select(OffsiteCopy.target, func.max(OffsiteCopy.last_attempt_at))
                    .where(OffsiteCopy.state == "failed")
                    .group_by(OffsiteCopy.target)
                ).all()
            )
            drills = [
                (r.name, r.drill_days, r.last_drill_at)
                for r in session.scalars(select(OffsiteTarget).where(OffsiteTarget.drill_days.is_not(None)))
            ]
        for name, at in failed_at.items():
            if at is not None and now - as_utc(at) >= RETRY_AFTER:
                done["copies"] += [
                    o.to_dict() for o in offsite.copy_pending(instance, actor=actor, target=name)
                ]
        for name, days, last in drills:
            if last is None or now - as_utc(last) >= timedelta(days=days or 7):
                try:
                    done["drills"].append(drill(instance, name, actor=actor))
                except AMSError as exc:
                    done["drills"].append({"target": name, "ok": False, "error": exc.message})
    except Exception:  # noqa: BLE001 - the scheduler outlives any one failure
        log.exception("the offsite copies could not be retried; the next run tries again")
    return done
