"""The hot path's routes answered without FastAPI's routing and dependencies (issue 12).

``GET /api/v1/agent/password`` (the check-in) and ``POST /api/v1/agent/password`` (the
report) are what every agent of the fleet calls; :class:`FastRoutes`, a pure ASGI
application in front of the FastAPI application (ams.api.app: its ``__call__``), answers
them itself: the path and method looked up in :data:`FAST_ROUTES`, the token and the query
read from the ASGI scope, the body read up to its limit and parsed with the standard
library's ``json``, the vault called in the event loop (ams.api.routes.agent says why; a
report is written with the others of the same turn of the loop, :class:`ReportWrites`), the
answer encoded once, counted and timed in the application's metrics and named by the
``X-AMS-Worker`` header as every answer is (ams.api.metrics). FastAPI's own stack (its
middlewares, Starlette's routing, the dependencies) cost several times the HTTP server's
own work per request (docs/performance.md).

It answers only the requests whose shape it knows: a bearer token, no query or a whole
number ``version``, a JSON body of exactly ``account``, ``version`` and ``blob`` with
their types and lengths, within the route's declared size, with headers within AMS's
limits. Anything else (no token, a query it does not know, a body too large, not JSON,
another shape, another method, headers over the limits) goes on, body included, to the
FastAPI application, whose routes are still declared (and so in
the OpenAPI document) and which answers it as it always has: the same status and error.
Errors of the vault come back as the application's exception handlers answer them; an
unexpected exception as a 500 in the AMS error shape, then raised on for uvicorn to log
(what Starlette's ServerErrorMiddleware does).

:data:`FAST_ROUTES` is the table of the routes answered here: ``(method, path)`` to a
handler, which returns False to hand the request on; :data:`FAST_PATTERNS` those with a
parameter in their path: an administrator's password read without ``history``
(``GET /api/v1/devices/{device}/password``, the API key checked on the read's own
connection; with a query, or without a bearer token, FastAPI's route answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import Connection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams import apikeys
from ams.api.limits import AGENT_PASSWORD, MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from ams.api.metrics import WORKER_HEADER, Metrics
from ams.apikeys import Role
from ams.errors import AMSError, InternalError
from ams.instance import Instance
from ams.vault import passwords

__all__ = ["FAST_PATTERNS", "FAST_ROUTES", "FastRoutes", "Handled", "Handler"]

AGENT_ROUTE = "/api/v1/agent/password"
_log = logging.getLogger("uvicorn.error")

# (the middleware, the scope, receive, send) -> True: answered; False: the application
# answers; messages: the application answers, these (the body read) received first.
Handled = bool | list[Message]
Handler = Callable[["FastRoutes", Scope, Receive, Send], Awaitable[Handled]]


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
        request = passwords.report_request(
            token, document["account"], document["version"], document["blob"], address=_address(scope)
        )
        # Stored with the other reports of this turn of the event loop (ReportWrites).
        stored = await fast.writes.store(request)
    except AMSError as exc:
        await fast.refuse(exc, scope, receive, send)
        return True
    await _answer(send, 201, stored.to_dict())
    return True


async def read_password(fast: FastRoutes, scope: Scope, receive: Receive, send: Send) -> bool:
    """``GET /api/v1/devices/{device}/password`` without ``history`` (an administrator's read,
    ams.api.routes.devices.read_password): the API key checked on the read's connection."""
    token = _bearer(_headers(scope))
    if token is None or scope["query_string"]:
        return False
    device = scope["path"][len(_DEVICES) : -len(_PASSWORD)]
    instance, address = fast.instance, _address(scope)

    def reader(conn: Connection) -> str:
        return f"apikey:{apikeys.authenticate(instance, token, Role.READER, address=address, conn=conn).id}"

    try:
        entry = passwords.read(instance, device, reader, via="api")
    except AMSError as exc:
        await fast.refuse(exc, scope, receive, send)
        return True
    await _answer(send, 200, entry)
    return True


FAST_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", AGENT_ROUTE): check_in,
    ("POST", AGENT_ROUTE): report,
}

# Routes with a parameter in their path: (method, pattern) -> (the route's template, which
# names it in the metrics, as FastAPI's routes are named; the handler).
_DEVICES, _PASSWORD = "/api/v1/devices/", "/password"
FAST_PATTERNS: list[tuple[str, re.Pattern[str], str, Handler]] = [
    (
        "GET",
        re.compile(r"/api/v1/devices/[^/]+/password"),
        "/api/v1/devices/{device}/password",
        read_password,
    ),
]


def _route(method: str, path: str) -> tuple[str, Handler] | None:
    """The metrics name and handler of a request answered here, or None."""
    handler = FAST_ROUTES.get((method, path))
    if handler is not None:
        return path, handler
    for wanted, pattern, template, found in FAST_PATTERNS:
        if method == wanted and pattern.fullmatch(path):
            return template, found
    return None


class ReportWrites:
    """The reports that one turn of a worker's event loop made ready, stored together.

    A report's handler reads and checks its body and waits here; the first to wait
    schedules :meth:`_flush` on the loop, which runs once every handler made ready in the
    same turn has handed its own, and stores them all (:func:`ams.vault.passwords.store_reports`):
    every token checked, then every blob test-decrypted, then one transaction and one commit
    for all (group commit). Each answer still goes out only after the commit that holds its
    report; what a commit costs (the write lock, the WAL's pages, the transaction) is shared
    by the reports of the batch, and each stage's code runs warm for all of them."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._pending: list[tuple[passwords.ReportRequest, asyncio.Future[passwords.StoredPassword]]] = []

    async def store(self, request: passwords.ReportRequest) -> passwords.StoredPassword:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[passwords.StoredPassword] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((request, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            results = passwords.store_reports(self.instance, [request for request, _ in pending])
        except Exception:
            _log.exception("the reports of a batch could not be written")
            results = [InternalError() for _ in pending]
        for (_, future), result in zip(pending, results, strict=True):
            if future.done():
                continue
            if isinstance(result, AMSError):
                future.set_exception(result)
            else:
                future.set_result(result)


class FastRoutes:
    """Pure ASGI: the routes of :data:`FAST_ROUTES` answered here, the rest by ``app``.

    ``errors`` renders an AMS error as the application's exception handlers do; ``metrics``
    are the application's (each answer counted and timed by route and status)."""

    def __init__(
        self, app: ASGIApp, instance: Instance, errors: Callable[[AMSError], Response], metrics: Metrics
    ) -> None:
        self.app = app
        self.instance = instance
        self.errors = errors
        self.metrics = metrics
        self.writes = ReportWrites(instance)
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    async def refuse(self, exc: AMSError, scope: Scope, receive: Receive, send: Send) -> None:
        await self.errors(exc)(scope, receive, send)

    def _count(self, path: str, status: int, seconds: float) -> None:
        counter = self._counted.get((path, status))
        if counter is None:
            counter = self._counted[(path, status)] = self.metrics.requests.labels(path, str(status))
        counter.inc()
        timer = self._timed.get(path)
        if timer is None:
            timer = self._timed[path] = self.metrics.latency.labels(path)
        timer.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route(scope.get("method", ""), scope.get("path", ""))
        if route is None or scope["type"] != "http" or not _within_limits(scope["headers"]):
            await self.app(scope, receive, send)
            return
        name, handler = route
        started = time.perf_counter()
        status = 500
        worker = (WORKER_HEADER, str(os.getpid()).encode())  # a forked worker has its own

        async def send_named(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), worker]
            await send(message)

        try:
            handled = await handler(self, scope, receive, send_named)
        except Exception:
            if status == 500:  # nothing sent yet
                await self.refuse(InternalError(), scope, receive, send_named)
            self._count(name, status, time.perf_counter() - started)
            raise  # uvicorn logs it
        if handled is True:
            self._count(name, status, time.perf_counter() - started)
            return
        await self.app(scope, _replaying(handled, receive) if handled else receive, send)


def _within_limits(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the headers are within AMS's limits (else the application answers 431)."""
    return (
        len(headers) <= MAX_HEADER_FIELDS and sum(len(n) + len(v) + 4 for n, v in headers) <= MAX_HEADER_BYTES
    )


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives the messages already read first (the body, for the application)."""
    pending = list(messages)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again
