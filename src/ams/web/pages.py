"""The console's pages: each one parses its input, calls a service function, renders a template.

No rule lives here: what a page shows comes from the same functions as ``ams status``,
``ams audit list`` and the REST API, and every change goes through the same service calls
as the CLI (which audit it). Errors are the services' own ``AMSError`` messages, shown
beside the field or at the top of the page, in the CLI's words.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from ams import __version__, audit, users
from ams.errors import AMSError, AuthenticationRequired, BadInput, PermissionDenied
from ams.web import forms
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

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))


def _when(value: datetime | str | None) -> str:
    """A time as people read it on a page: UTC, to the minute."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = _when
router = APIRouter(include_in_schema=False)

# Every console page: no framing, no referrer, no cache, scripts and styles from AMS only.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_AUDIT_PAGE = 50

_NAV = (
    ("/", "Overview"),
    ("/audit", "Audit"),
)


def _instance(request: Request) -> Any:
    return request.app.state.instance


def _now(request: Request) -> datetime:
    now: datetime = _instance(request).clock.now()
    return now


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    session: users.SessionInfo | None = None,
    status_code: int = 200,
) -> Response:
    """A page with the layout's context: who is logged in, the navigation, the logout form."""
    logout = None
    if session is not None:
        logout = forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=_now(request))
    response = templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "nav": _NAV,
            "path": request.url.path,
            "logout_form": logout,
            "version": __version__,
            **context,
        },
        status_code=status_code,
        headers=_HEADERS,
    )
    return response


async def _form(request: Request) -> FormData:
    return await request.form()


# --- login and logout -------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    secret, new = login_secret(request)
    form = forms.form_for(forms.LoginForm, None, secret=secret, now=_now(request), next=safe_next(next))
    response = render(request, "login.html", {"form": form, "error": None})
    if new:
        set_cookie(request, response, LOGIN_COOKIE, secret, max_age=3600)
    return response


@router.post("/login")
async def login_submit(request: Request) -> Response:
    secret, new = login_secret(request)
    form = forms.form_for(forms.LoginForm, await _form(request), secret=secret, now=_now(request))
    error: str | None = None
    valid = form.validate()
    status_code = 403 if form.csrf_token.errors else 400
    if valid:
        try:
            logged_in = await asyncio.to_thread(
                users.login, _instance(request), form.name.data, form.password.data, client_of(request)
            )
        except AuthenticationRequired as exc:
            error, status_code = exc.message, 401
        except AMSError as exc:
            error, status_code = exc.message, exc.http_status
        else:
            response = RedirectResponse(safe_next(form.next.data), status_code=303)
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
    session = current(request)
    form = forms.form_for(
        forms.CsrfOnlyForm, await _form(request), secret=session.csrf_secret, now=_now(request)
    )
    if not form.validate():
        raise ConsoleRefused(PermissionDenied(_first_error(form)), session)
    await asyncio.to_thread(users.end_session, _instance(request), session.token_hash, session.actor)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _first_error(form: Any) -> str:
    for errors in form.errors.values():
        if errors:
            return str(errors[0])
    return "the form is not valid"


# --- pages --------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request) -> Response:
    from ams.overview import console_overview

    session = current(request)
    return render(request, "overview.html", {"o": console_overview(_instance(request))}, session=session)


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
        with _instance(request).session() as db:
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

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
