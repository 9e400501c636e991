"""What every console page shares: the templates, the layout's context, the safe headers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.responses import Response

from ams import __version__, users
from ams.apikeys import Role
from ams.errors import PermissionDenied
from ams.web import forms
from ams.web.session import ConsoleRefused, current

__all__ = [
    "FORM_BODY",
    "STATIC",
    "checked_post",
    "posted_form",
    "first_error",
    "instance_of",
    "now_of",
    "posted",
    "render",
]

_HERE = Path(__file__).parent
# The largest form a console page posts (a few fields and a CSRF token); the PFX upload
# declares its own limit (ams.web.certificates).
FORM_BODY = 16 * 1024
STATIC = _HERE / "static"
templates = Jinja2Templates(directory=str(_HERE / "templates"))


def _when(value: datetime | str | None) -> str:
    """A time as people read it on a page: UTC, to the minute."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = _when

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
_NAV = (
    ("/", "Overview"),
    ("/database", "Database"),
    ("/security", "Security"),
    ("/certificates", "Password settings"),
    ("/devices", "Devices"),
    ("/directories", "Directories"),
    ("/audit", "Audit"),
)


def instance_of(request: Request) -> Any:
    return request.app.state.instance


def now_of(request: Request) -> datetime:
    now: datetime = instance_of(request).clock.now()
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
        logout = forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now_of(request))
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


async def posted(request: Request) -> FormData:
    return await request.form()


def first_error(form: Any) -> str:
    for errors in form.errors.values():
        if errors:
            return str(errors[0])
    return "the form is not valid"


async def posted_form(
    request: Request, form_class: type[Any], needed: Role = Role.ADMIN
) -> tuple[Any, Any, bool]:
    """The session (with the role ``needed``), the posted form and whether it is valid.

    A missing or wrong CSRF token is a 403 page and nothing happens; other field errors are
    the caller's to show beside their fields.
    """
    session = current(request, needed)
    form = forms.form_for(form_class, await posted(request), secret=session.csrf_secret, now=now_of(request))
    valid = form.validate()
    if form.csrf_token.errors:
        raise ConsoleRefused(PermissionDenied(first_error(form)), session)
    return session, form, valid


async def checked_post(request: Request, needed: Role = Role.ADMIN) -> tuple[users.SessionInfo, FormData]:
    """The session (with the role ``needed``) and the posted data, after the form's CSRF
    token was checked; a missing or wrong token is a 403 page and nothing happens."""
    session, _form, _valid = await posted_form(request, forms.CsrfOnlyForm, needed)
    return session, await posted(request)  # Starlette parses a body once and keeps it
