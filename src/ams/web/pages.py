"""The console's pages: each one parses its input, calls a service function, renders a template.

No rule lives here: what a page shows comes from the same functions as ``ams status``,
``ams audit list`` and the REST API, and every change goes through the same service calls
as the CLI (which audit it). Errors are the services' own ``AMSError`` messages, shown
beside the field or at the top of the page, in the CLI's words.
"""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from ams import audit, users
from ams.apikeys import Role
from ams.errors import AMSError, AuthenticationRequired, BadInput, InternalError
from ams.web import forms
from ams.web._render import FORM_BODY, STATIC, checked_post, instance_of, now_of, posted, render
from ams.web.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleRedirect,
    ConsoleRefused,
    client_of,
    current,
    login_secret,
    safe_next,
    set_cookie,
)

__all__ = ["install", "router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)
_AUDIT_PAGE = 50


# --- login and logout -------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    secret, new = login_secret(request)
    form = forms.form_for(forms.LoginForm, None, secret=secret, now=now_of(request), next=safe_next(next))
    response = render(request, "login.html", {"form": form, "error": None})
    if new:
        set_cookie(request, response, LOGIN_COOKIE, secret, max_age=3600)
    return response


@router.post("/login")
async def login_submit(request: Request) -> Response:
    secret, new = login_secret(request)
    form = forms.form_for(forms.LoginForm, await posted(request), secret=secret, now=now_of(request))
    error: str | None = None
    valid = form.validate()
    status_code = 403 if form.csrf_token.errors else 400
    if valid:
        try:
            logged_in = await asyncio.to_thread(
                users.login, instance_of(request), form.name.data, form.password.data, client_of(request)
            )
        except AuthenticationRequired as exc:
            error, status_code = exc.message, 401
        except AMSError as exc:
            error, status_code = exc.message, exc.http_status
        else:
            response: Response = RedirectResponse(safe_next(form.next.data), status_code=303)
            set_cookie(request, response, SESSION_COOKIE, logged_in.token, max_age=None)
            response.delete_cookie(LOGIN_COOKIE, path="/")
            return response
    form.password.data = ""
    response = render(request, "login.html", {"form": form, "error": error}, status_code=status_code)
    if new:
        set_cookie(request, response, LOGIN_COOKIE, secret, max_age=3600)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session, _data = await checked_post(request, Role.READER)
    await asyncio.to_thread(users.end_session, instance_of(request), session.token_hash, session.actor)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- pages --------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request) -> Response:
    from ams.overview import console_overview

    session = current(request)
    return render(request, "overview.html", {"o": console_overview(instance_of(request))}, session=session)


def _parse_time(value: str | None, what: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{what} {value[:40]!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_int(value: str | None, what: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 12:
        raise BadInput(f"{what} {value[:40]!r} is not a number")
    return int(value)


@router.get("/audit")
def audit_page(request: Request) -> Response:
    session = current(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("event", "since", "until", "subject", "before")}
    events: list[audit.EventRecord] = []
    error: str | None = None
    try:
        event_id = _parse_int(filters["event"], "event id")
        since = _parse_time(filters["since"], "from")
        until = _parse_time(filters["until"], "until")
        before = _parse_int(filters["before"], "page")
        with instance_of(request).session() as db:
            events = audit.list_events(
                db,
                since=since,
                until=until,
                event_id=event_id,
                subject=filters["subject"] or None,
                before_seq=before,
                limit=_AUDIT_PAGE + 1,
            )
    except BadInput as exc:
        error = exc.message
    more = len(events) > _AUDIT_PAGE
    events = list(reversed(events))[:_AUDIT_PAGE]  # newest first on the page
    older = None
    if more and events:
        older = {**{k: v for k, v in filters.items() if v and k != "before"}, "before": events[-1].seq}
    return render(
        request,
        "audit.html",
        {"events": events, "filters": filters, "error": error, "older": older, "names": audit.DESCRIPTIONS},
        session=session,
        status_code=422 if error else 200,
    )


# --- wiring ------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Add the console to the service's application: pages, assets and its error pages."""

    @app.exception_handler(ConsoleRedirect)
    async def to_login(request: Request, exc: ConsoleRedirect) -> Response:
        if request.headers.get("hx-request"):
            # An htmx request cannot follow a redirect into a whole page: ask it to.
            return Response(status_code=401, headers={"HX-Redirect": exc.location})
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(ConsoleRefused)
    async def refused(request: Request, exc: ConsoleRefused) -> Response:
        return render(
            request,
            "error.html",
            {"message": exc.error.message, "status": exc.error.http_status},
            session=exc.session,
            status_code=exc.error.http_status,
        )

    from ams.web import certificates, database, devices, directories, security

    pages = (
        router,
        database.router,
        security.router,
        certificates.router,
        devices.router,
        directories.router,
    )
    for pages_router in pages:
        app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # An unexpected failure on a console page is a page too (the API's answer stays JSON);
    # the traceback goes to the service's log only.
    console_paths = {getattr(route, "path", None) for pages_router in pages for route in pages_router.routes}
    api_internal_error = app.exception_handlers.get(Exception)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        route = request.scope.get("route")
        if getattr(route, "path", None) in console_paths or api_internal_error is None:
            error = InternalError()
            return render(request, "error.html", {"message": error.message, "status": 500}, status_code=500)
        answer = api_internal_error(request, exc)
        return await answer if inspect.isawaitable(answer) else answer
