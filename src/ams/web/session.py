"""The console's cookies and who a request is.

Two cookies, both HttpOnly and SameSite=Strict, and Secure when the console is served over
TLS: ``ams_session`` (the session token, set at login) and ``ams_login`` (a random value
that keys the login form's CSRF token before there is a session). Neither holds anything
a copy of the database could reproduce: the database keeps the token's SHA-256 only.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request
from starlette.responses import Response

from ams import crypto, users
from ams.apikeys import Role
from ams.errors import AMSError, AuthenticationRequired, PermissionDenied
from ams.instance import Instance

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "ConsoleRedirect",
    "ConsoleRefused",
    "client_of",
    "current",
    "login_secret",
    "safe_next",
    "set_cookie",
]

SESSION_COOKIE = "ams_session"
LOGIN_COOKIE = "ams_login"


class ConsoleRedirect(Exception):
    """Not logged in (or the session ended): go to the login page, then come back."""

    def __init__(self, location: str, reason: str | None = None) -> None:
        super().__init__(location)
        self.location = location
        self.reason = reason


class ConsoleRefused(Exception):
    """Logged in, but the role does not allow this page or form (403)."""

    def __init__(self, error: AMSError, session: users.SessionInfo | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.session = session


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def current(request: Request, needed: Role = Role.READER) -> users.SessionInfo:
    """The console session of this request, or a redirect to the login page."""
    instance: Instance = request.app.state.instance
    token = request.cookies.get(SESSION_COOKIE)
    try:
        return users.open_session(instance, token, needed)
    except AuthenticationRequired as exc:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        reason = exc.message if token else None
        raise ConsoleRedirect(f"/login?next={quote(target, safe='/')}", reason) from None
    except PermissionDenied as exc:
        mine = users.open_session(instance, token, Role.READER)
        raise ConsoleRefused(exc, mine) from None


def login_secret(request: Request) -> tuple[str, bool]:
    """The pre-login CSRF secret of this browser, and whether it must be set as a cookie."""
    existing = request.cookies.get(LOGIN_COOKIE, "")
    if 20 <= len(existing) <= 64:
        return existing, False
    return crypto.random_secret(32), True


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# A path and query on this server: no scheme, no host, no backslash, no space or control
# character (browsers drop tabs and line feeds, so "/\t/evil.example" would become "//...").
_LOCAL_PATH = re.compile(r"/(?!/)[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this server only (never another host)."""
    if value and len(value) <= 2048 and _LOCAL_PATH.fullmatch(value):
        return value
    return "/"
