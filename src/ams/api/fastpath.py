"""The hot path's routes answered without FastAPI's routing and dependencies (issue 12).

``GET /api/v1/agent/password`` (the check-in) and ``POST /api/v1/agent/password`` (the
report) are what every agent of the fleet calls; :class:`FastRoutes`, a pure ASGI
middleware inside the metrics and limits middlewares, answers them itself: the path and
method looked up in :data:`FAST_ROUTES`, the token and the query read from the ASGI scope,
the body read up to its limit and parsed with the standard library's ``json``, the vault
called in the event loop (ams.api.routes.agent says why), the answer encoded once.

It answers only the requests whose shape it knows: a bearer token, no query or a whole
number ``version``, a JSON body of exactly ``account``, ``version`` and ``blob`` with
their types and lengths, within the route's declared size. Anything else (no token, a
query it does not know, a body too large, not JSON, another shape, another method) goes
on, body included, to the FastAPI application, whose routes are still declared (and so in
the OpenAPI document) and which answers it as it always has: the same status and error.
Errors of the vault come back as the application's exception handlers answer them.

:data:`FAST_ROUTES` is the table of the routes answered here: ``(method, path)`` to a
handler, which returns False to hand the request on. Another hot route (the
administrator's password read) is one more entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams.api.limits import AGENT_PASSWORD
from ams.errors import AMSError
from ams.instance import Instance
from ams.vault import passwords

__all__ = ["FAST_ROUTES", "FastRoutes", "Handled", "Handler"]

AGENT_ROUTE = "/api/v1/agent/password"

# (the middleware, the scope, receive, send) -> True: answered; False: the application
# answers; messages: the application answers, these (the body read) received first.
Handled = bool | list[Message]
Handler = Callable[["FastRoutes", Scope, Receive, Send], Awaitable[Handled]]


class _Route:
    """What ``scope["route"]`` holds for the metrics middleware (its ``path`` label)."""

    def __init__(self, path: str) -> None:
        self.path = path


# What ams-agent sends: ``version=`` (none yet) or ``version=N``.
_VERSION_QUERY = re.compile(rb"version=(-?[0-9]{1,63})?")
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _encode(content: Any) -> bytes:
    # As Starlette's JSONResponse renders.
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


async def _answer(send: Send, status: int, content: Any) -> None:
    body = _encode(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each header (what Starlette's ``Headers.get`` gives)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return found


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _address(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def check_in(fast: FastRoutes, scope: Scope, receive: Receive, send: Send) -> bool:
    """``GET /api/v1/agent/password`` (ams.api.routes.agent.rotation_advice)."""
    query: bytes = scope["query_string"]
    reported: int | None = None
    if query:
        match = _VERSION_QUERY.fullmatch(query)
        if match is None:
            return False
        reported = int(match[1]) if match[1] is not None else None
    token = _bearer(_headers(scope))
    if token is None:
        return False
    try:
        advice = passwords.check_in(fast.instance, token, reported, address=_address(scope), generate=False)
    except passwords.FirstCertificateNeeded:
        return False  # the route generates it in a thread
    except AMSError as exc:
        await fast.refuse(exc, scope, receive, send)
        return True
    await _answer(send, 200, advice.to_dict())
    return True


_REPORT_KEYS = frozenset(("account", "version", "blob"))
_MAX_BLOB_TEXT = 4 * passwords.MAX_BLOB_BYTES


def _report_body(body: bytes) -> dict[str, Any] | None:
    """The report's fields, when the body is exactly the shape PasswordBody takes."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.keys() != _REPORT_KEYS:
        return None
    account, version, blob = document["account"], document["version"], document["blob"]
    if (
        type(account) is not str
        or not 1 <= len(account) <= 64
        or type(version) is not int
        or type(blob) is not str
        or not 1 <= len(blob) <= _MAX_BLOB_TEXT
    ):
        return None
    return document


async def report(fast: FastRoutes, scope: Scope, receive: Receive, send: Send) -> Handled:
    """``POST /api/v1/agent/password`` (ams.api.routes.agent.report_password)."""
    headers = _headers(scope)
    token = _bearer(headers)
    content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    try:
        length = int(headers.get(b"content-length", b""))
    except ValueError:
        return False
    if token is None or content_type != b"application/json" or not 0 < length <= AGENT_PASSWORD:
        return False
    chunks: list[bytes] = []
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > AGENT_PASSWORD:
            break
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    document = _report_body(b"".join(chunks)) if messages[-1]["type"] == "http.request" else None
    if document is None or size > AGENT_PASSWORD:
        return messages
    try:
        stored = passwords.report(
            fast.instance,
            token,
            document["account"],
            document["version"],
            document["blob"],
            address=_address(scope),
        )
    except AMSError as exc:
        await fast.refuse(exc, scope, receive, send)
        return True
    await _answer(send, 201, stored.to_dict())
    return True


FAST_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", AGENT_ROUTE): check_in,
    ("POST", AGENT_ROUTE): report,
}
_ROUTES = {path: _Route(path) for _method, path in FAST_ROUTES}


class FastRoutes:
    """Pure ASGI: the routes of :data:`FAST_ROUTES` answered here, the rest by ``app``.

    ``errors`` renders an AMS error as the application's exception handlers do."""

    def __init__(self, app: ASGIApp, instance: Instance, errors: Callable[[AMSError], Response]) -> None:
        self.app = app
        self.instance = instance
        self.errors = errors

    async def refuse(self, exc: AMSError, scope: Scope, receive: Receive, send: Send) -> None:
        await self.errors(exc)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = FAST_ROUTES.get((scope["method"], scope["path"]))
            if handler is not None:
                handled = await handler(self, scope, receive, send)
                if handled is True:
                    scope["route"] = _ROUTES[scope["path"]]
                    return
                if handled:
                    receive = _replaying(handled, receive)
        await self.app(scope, receive, send)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives the messages already read first (the body, for the application)."""
    pending = list(messages)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again
