"""The Devices page: search, a device's rotation history, reading a password, forcing rotation.

Reading a password is a deliberate act: a button (a POST with the form's CSRF token), the
same audited read as ``ams password get`` (event 1411, ``via: console``), the password shown
in the answer only, with Copy and Hide; nothing of it is put in a URL or kept in the page
after a reload. Expiry is ``ams device expire`` (one, a selection, or a whole scope).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from ams.apikeys import Role
from ams.errors import AMSError, BadInput
from ams.web import forms
from ams.web._render import FORM_BODY, checked_post, instance_of, now_of, render
from ams.web.session import ConsoleRefused, current

__all__ = ["router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)
_LIST_LIMIT = 500
_STATUSES = ("active", "pending", "disabled")


def _csrf(request: Request, session: Any) -> Any:
    return forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now_of(request))


@router.get("/devices")
def devices_page(request: Request) -> Response:
    from ams.vault import devices

    session = current(request)
    q = request.query_params
    filters = {"q": q.get("q", "").strip()[:100], "scope": q.get("scope", ""), "status": q.get("status", "")}
    error = None
    found: list[Any] = []
    try:
        if filters["status"] and filters["status"] not in _STATUSES:
            raise BadInput(f"unknown state {filters['status'][:20]!r}: use active, pending or disabled")
        found = devices.list_devices(
            instance_of(request),
            scope=filters["scope"] or None,
            status=filters["status"] or None,
            name_contains=filters["q"] or None,
            limit=_LIST_LIMIT + 1,
        )
    except AMSError as exc:
        error = exc.message
    scopes = sorted({d.scope for d in found} | ({filters["scope"]} if filters["scope"] else set()))
    return render(
        request,
        "devices.html",
        {
            "devices": found[:_LIST_LIMIT],
            "truncated": len(found) > _LIST_LIMIT,
            "filters": filters,
            "statuses": _STATUSES,
            "scopes": scopes,
            "error": error,
            "expired": int(q["expired"]) if q.get("expired", "").isdigit() else None,
            "csrf": _csrf(request, session),
        },
        session=session,
        status_code=422 if error else 200,
    )


@router.post("/devices/expire")
async def expire(request: Request) -> Response:
    """Expire the selected devices, or every device of one scope."""
    from ams.vault import devices

    session, data = await checked_post(request)
    instance = instance_of(request)
    selected = [str(v) for v in data.getlist("device")][:_LIST_LIMIT]
    scope = str(data.get("scope") or "")
    try:
        if data.get("all_in_scope"):
            if not scope:
                raise BadInput("choose a scope to expire every device of")
            expired = await asyncio.to_thread(devices.expire, instance, session.actor, scope=scope)
        elif selected:
            expired = []
            for ref in selected:
                expired += await asyncio.to_thread(devices.expire, instance, session.actor, device=ref)
        else:
            raise BadInput("select at least one device to expire")
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    return RedirectResponse(f"/devices?expired={len(expired)}", status_code=303)


def _device_page(request: Request, session: Any, ref: str, **context: Any) -> Response:
    from ams.vault import devices, passwords

    instance = instance_of(request)
    try:
        info = devices.show(instance, ref)
        history = passwords.versions(instance, info.id)
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    status_code = context.pop("status_code", 200)
    return render(
        request,
        "device.html",
        {
            "d": info,
            "history": history,
            "csrf": _csrf(request, session),
            "read": None,
            "error": None,
            **context,
        },
        session=session,
        status_code=status_code,
    )


@router.get("/devices/{ref}")
def device_page(request: Request, ref: str) -> Response:
    return _device_page(request, current(request), ref)


@router.post("/devices/{ref}/password")
async def read_password(request: Request, ref: str) -> Response:
    from ams.vault import passwords

    session, data = await checked_post(request, Role.READER)
    history = bool(data.get("history"))
    try:
        read = await asyncio.to_thread(
            passwords.read, instance_of(request), ref, session.actor, history=history, via="console"
        )
    except AMSError as exc:
        return _device_page(request, session, ref, error=exc.message, status_code=exc.http_status)
    entries = [read["current"], *read["history"]] if history else [read]
    entries = [e for e in entries if e]
    if request.headers.get("hx-request"):
        return render(request, "_password.html", {"entries": entries}, session=session)
    return _device_page(request, session, ref, read=entries)


@router.post("/devices/{ref}/expire")
async def expire_one(request: Request, ref: str) -> Response:
    from ams.vault import devices

    session, _data = await checked_post(request)
    try:
        await asyncio.to_thread(devices.expire, instance_of(request), session.actor, device=ref)
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    return _device_page(
        request, session, ref, message="The device will rotate its password at its next check-in."
    )
