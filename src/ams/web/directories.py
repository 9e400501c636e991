"""The Directories page: each hosted directory, its entries, and its snapshots.

The same service calls as ``ams directory`` and ``ams snapshot`` (and the AWS-compatible
CreateSnapshot, RestoreFromSnapshot, DeleteSnapshot). A restore asks first, saying what is
lost (every change since the snapshot's time); it then runs in the service's background
worker, and the page follows the directory's stage until it is Active again.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from ams.errors import AMSError, BadInput
from ams.web import forms
from ams.web._render import FORM_BODY, checked_post, instance_of, now_of, render
from ams.web.session import ConsoleRefused, current

__all__ = ["router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)
_PAGE = 100
# Stages a directory passes through on its own; the page polls while it is in one of them.
_MOVING = {"Requested", "Creating", "Restoring", "Updating", "Deleting"}


@router.get("/directories")
def directories_page(request: Request) -> Response:
    from ams.directory import directories

    session = current(request)
    found = [d for d in directories.list_directories(instance_of(request)) if d.stage != "Deleted"]
    return render(request, "directories.html", {"directories": found}, session=session)


def _directory_page(request: Request, session: Any, directory_id: str, **context: Any) -> Response:
    from ams.directory import directories, objects, snapshots

    instance = instance_of(request)
    q = request.query_params
    base = q.get("base", "").strip()[:1024] or None
    contains = q.get("q", "").strip()[:256] or None
    offset = int(q["offset"]) if q.get("offset", "").isdigit() and len(q["offset"]) < 9 else 0
    entries: list[Any] = []
    entries_error = None
    try:
        info = directories.get(instance, directory_id)
        snaps = snapshots.list_snapshots(instance, directory_id)
        limits = snapshots.limits(instance, directory_id) if info.type != "ADConnector" else None
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    try:
        entries = objects.list_entries(
            instance, directory_id, base=base, contains=contains, limit=_PAGE + 1, offset=offset
        )
    except AMSError as exc:  # Restoring (offline), or a base DN that is not valid
        entries_error = exc.message
    values: dict[str, Any] = {
        "d": info,
        "moving": info.stage in _MOVING,
        "manual": [s for s in snaps if s.type == "Manual"],
        "auto": [s for s in snaps if s.type == "Auto"],
        "limits": limits,
        "entries": entries[:_PAGE],
        "more": len(entries) > _PAGE,
        "base": base or "",
        "contains": contains or "",
        "offset": offset,
        "page": _PAGE,
        "entries_error": entries_error,
        "csrf": forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now_of(request)),
        "message": None,
        "error": None,
        "confirm_restore": None,
    }
    values.update(context)
    status_code = values.pop("status_code", 200)
    return render(request, "directory.html", values, session=session, status_code=status_code)


@router.get("/directories/{directory_id}")
def directory_page(request: Request, directory_id: str) -> Response:
    done = {"created": "The snapshot was taken.", "deleted": "The snapshot was deleted."}
    message = done.get(request.query_params.get("done", ""))
    return _directory_page(request, current(request), directory_id, message=message)


@router.get("/directories/{directory_id}/stage")
def stage_fragment(request: Request, directory_id: str) -> Response:
    """The stage alone, for the page to poll while a restore (or another change) runs."""
    from ams.directory import directories

    session = current(request)
    try:
        info = directories.get(instance_of(request), directory_id)
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    response = render(request, "_stage.html", {"d": info, "moving": info.stage in _MOVING}, session=session)
    if info.stage not in _MOVING:
        # Done: reload the whole page, so the entries and snapshots show the new state.
        response.headers["HX-Refresh"] = "true"
    return response


@router.post("/directories/{directory_id}/snapshots")
async def create_snapshot(request: Request, directory_id: str) -> Response:
    from ams.directory import snapshots

    session, data = await checked_post(request)
    name = str(data.get("name") or "").strip() or None
    try:
        await asyncio.to_thread(
            snapshots.create, instance_of(request), directory_id, name=name, actor=session.actor
        )
    except AMSError as exc:
        return _directory_page(request, session, directory_id, error=exc.message, status_code=exc.http_status)
    return RedirectResponse(f"/directories/{quote(directory_id)}?done=created", status_code=303)


@router.post("/directories/{directory_id}/snapshots/{snapshot_id}/restore")
async def restore_snapshot(request: Request, directory_id: str, snapshot_id: str) -> Response:
    from ams.directory import snapshots

    session, data = await checked_post(request)
    instance = instance_of(request)
    try:
        snapshot = snapshots.get(instance, snapshot_id)
        if snapshot.directory_id != directory_id:
            raise BadInput(f"snapshot {snapshot_id} belongs to directory {snapshot.directory_id}")
        if data.get("confirm") != "yes":
            return _directory_page(request, session, directory_id, confirm_restore=snapshot)
        await asyncio.to_thread(snapshots.restore, instance, snapshot_id, actor=session.actor)
    except AMSError as exc:
        return _directory_page(request, session, directory_id, error=exc.message, status_code=exc.http_status)
    return RedirectResponse(f"/directories/{quote(directory_id)}", status_code=303)


@router.post("/directories/{directory_id}/snapshots/{snapshot_id}/delete")
async def delete_snapshot(request: Request, directory_id: str, snapshot_id: str) -> Response:
    from ams.directory import snapshots

    session, _data = await checked_post(request)
    instance = instance_of(request)
    try:
        if snapshots.get(instance, snapshot_id).directory_id != directory_id:
            raise BadInput(f"snapshot {snapshot_id} does not belong to directory {directory_id}")
        await asyncio.to_thread(snapshots.delete, instance, snapshot_id, actor=session.actor)
    except AMSError as exc:
        return _directory_page(request, session, directory_id, error=exc.message, status_code=exc.http_status)
    return RedirectResponse(f"/directories/{quote(directory_id)}?done=deleted", status_code=303)
