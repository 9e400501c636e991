"""The Database page: the engine, the backup schedule and retention, Backup now, the backups.

The same service calls as ``ams backup create|list|verify|schedule``. "Backup now" runs in a
thread of the service (one at a time) and the page follows it until the file is written and
verified. A restore stays a command-line act, because the service must be stopped for it:
the page shows the exact command for the backup chosen.
"""

from __future__ import annotations

import asyncio
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from ams.errors import AMSError, BadInput
from ams.web import forms
from ams.web._render import FORM_BODY, checked_post, instance_of, now_of, render
from ams.web.session import current

__all__ = ["BackupJob", "router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)
_KEEPS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")


@dataclass
class BackupJob:
    """One "Backup now" of this process: its progress, then its result or its error."""

    actor: str
    started: float = field(default_factory=time.monotonic)
    done_bytes: int = 0
    total_bytes: int | None = None
    phase: str = "starting"
    result: Any = None
    verified: bool | None = None
    error: str | None = None
    finished: bool = False

    def progress(self, done: int, total: int, phase: str) -> None:
        """ams.backup's progress callback: (bytes done, bytes in all, what it is doing)."""
        self.done_bytes, self.total_bytes, self.phase = done, total or None, phase

    @property
    def percent(self) -> int | None:
        if not self.total_bytes:
            return None
        return min(100, int(100 * self.done_bytes / self.total_bytes))


_lock = threading.Lock()


def _jobs(request: Request) -> dict[str, Any]:
    state = request.app.state
    if not hasattr(state, "console_backup"):
        state.console_backup = {"job": None}
    jobs: dict[str, Any] = state.console_backup
    return jobs


def _run(instance: Any, job: BackupJob) -> None:
    from ams import backup
    from ams.backup.verify import verify_and_record

    try:
        job.result = backup.create_backup(instance, actor=job.actor, progress=job.progress)
        job.phase = "verifying"
        verify_and_record(Path(job.result.path), instance, actor=job.actor)
        job.verified = True
    except AMSError as exc:
        job.error = exc.message
    finally:
        job.finished = True


def _page(request: Request, session: Any, **context: Any) -> Response:
    from ams import backup
    from ams.overview import console_overview

    instance = instance_of(request)
    values: dict[str, Any] = {
        "o": console_overview(instance),
        "settings": backup.get_settings(instance),
        "status": backup.schedule_status(instance),
        "backups": backup.list_backups(instance),
        "targets": _targets(instance),
        "home": str(instance.home.root),
        "job": _jobs(request)["job"],
        "csrf": forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now_of(request)),
        "selected": request.query_params.get("restore"),
        "message": None,
        "error": None,
        "schedule_error": None,
        "verified": None,
    }
    values.update(context)
    selected = next((b for b in values["backups"] if b.backup_id == values["selected"]), None)
    values["restore_command"] = (
        f"ams backup restore {shlex.quote(selected.path)} --home {shlex.quote(values['home'])}"
        if selected is not None and selected.path
        else None
    )
    status_code = values.pop("status_code", 200)
    return render(request, "database.html", values, session=session, status_code=status_code)


def _targets(instance: Any) -> list[dict[str, Any]]:
    """The offsite targets with the last copy's state and age (ams.backup.targets, .offsite)."""
    from ams.backup import offsite, targets

    states = {s["name"]: s for s in offsite.offsite_status(instance)}
    return [{**t.to_dict(), "status": states.get(t.name) or {}} for t in targets.list_targets(instance)]


@router.get("/database")
def database_page(request: Request) -> Response:
    return _page(request, current(request))


@router.post("/database/backup")
async def backup_now(request: Request) -> Response:
    session, _data = await checked_post(request)
    jobs = _jobs(request)
    with _lock:
        running = jobs["job"]
        if running is None or running.finished:
            jobs["job"] = BackupJob(actor=session.actor)
            thread = threading.Thread(
                target=_run, args=(instance_of(request), jobs["job"]), name="console-backup", daemon=True
            )
            thread.start()
    return RedirectResponse("/database", status_code=303)


@router.get("/database/backup/progress")
def backup_progress(request: Request) -> Response:
    session = current(request)
    job = _jobs(request)["job"]
    response = render(request, "_backup_job.html", {"job": job}, session=session)
    if job is None or job.finished:
        response.headers["HX-Refresh"] = "true"  # the list and the overview show the new backup
    return response


def _int(data: Any, name: str, label: str) -> int | None:
    raw = str(data.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 6:
        raise BadInput(f"{label} must be a whole number")
    return int(raw)


@router.post("/database/schedule")
async def schedule(request: Request) -> Response:
    from ams import backup

    session, data = await checked_post(request)
    try:
        when = str(data.get("when") or "at")
        at = str(data.get("at") or "").strip() if when == "at" else None
        every = str(data.get("every") or "").strip() if when == "every" else None
        if when == "at" and not at:
            raise BadInput("give the daily time as HH:MM (UTC)")
        if when == "every" and not every:
            raise BadInput("give the interval, e.g. 6h or 30m")
        destination = str(data.get("destination") or "").strip()
        changes: dict[str, Any] = {
            "retain_days": _int(data, "retain_days", "retain days"),
            **{k: _int(data, k, k.replace("_", " ")) for k in _KEEPS},
        }
        await asyncio.to_thread(
            backup.set_settings,
            instance_of(request),
            actor=session.actor,
            at=at or None,
            every=every or None,
            destination=Path(destination) if destination else None,
            create=bool(destination and data.get("create")),
            **changes,
        )
    except AMSError as exc:
        return _page(request, session, schedule_error=exc.message, status_code=exc.http_status)
    return _page(request, session, message="The schedule was saved.")


@router.post("/database/verify")
async def verify(request: Request) -> Response:
    from ams import backup
    from ams.backup.verify import verify_and_record

    session, data = await checked_post(request)
    instance = instance_of(request)
    wanted = str(data.get("backup_id") or "")
    entry = next((b for b in backup.list_backups(instance) if b.backup_id == wanted and b.path), None)
    if entry is None or entry.path is None:
        return _page(
            request, session, error=f"no backup {wanted[:40]!r} with a file: reload the page", status_code=404
        )
    deep = bool(data.get("deep"))
    try:
        await asyncio.to_thread(verify_and_record, Path(entry.path), instance, actor=session.actor, deep=deep)
    except AMSError as exc:
        return _page(
            request, session, error=f"{entry.backup_id} did not verify: {exc.message}", status_code=200
        )
    what = "A restore drill (deep verify)" if deep else "Verification"
    return _page(request, session, message=f"{what} of {entry.backup_id} passed.")


@router.post("/database/rescan")
async def rescan(request: Request) -> Response:
    from ams.backup.catalog import rescan as rescan_catalog

    session, _data = await checked_post(request)
    try:
        found = await asyncio.to_thread(rescan_catalog, instance_of(request), actor=session.actor)
    except AMSError as exc:
        return _page(request, session, error=exc.message, status_code=exc.http_status)
    summary = ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in found.to_dict().items() if isinstance(v, int)
    )
    return _page(request, session, message=f"The backup folders were read again ({summary or 'no change'}).")
