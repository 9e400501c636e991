"""How much a request to ``ams serve`` may carry, and the error shape of a refusal.

Each route declares the largest body it takes next to its path, with FastAPI's own
``max_body_size`` (on its router, or on the route when it differs). Starlette's body
limiter then counts the bytes as they arrive (chunked bodies too) and stops at the limit,
and a declared ``Content-Length`` above it is refused before a byte of the body is read.
Around that, this module:

- refuses a declared ``Content-Length`` above the limit before a route that reads no
  body runs at all (:func:`refuse_oversized`, an app-wide dependency, which also bounds
  the nesting of a JSON body);
- answers every such refusal as AMS answers errors, ``{"error", "message"}`` with 413
  (:class:`RequestLimitsMiddleware`; Starlette's own answer is plain text), refuses
  headers over :data:`MAX_HEADER_BYTES` or :data:`MAX_HEADER_FIELDS` with 431, and ends
  the connection (``Connection: close``) whenever an answer leaves part of a body unread,
  so that the HTTP server does not go on reading, and dropping, the rest of it.

h11 also bounds the request line and headers while they arrive (``ams serve`` sets its
limit to :data:`MAX_HEADER_BYTES`; it answers 400 itself). The AWS-compatible endpoint
reads at most 1 MiB itself and answers in its own error shape (ams.api.aws_ds.router).
docs/operations.md lists the limits.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams.errors import BadInput, RequestTooLarge

__all__ = [
    "ADMIN_JSON",
    "AGENT_JSON",
    "AGENT_PASSWORD",
    "DIRECTORY_ENTRY",
    "LDIF_IMPORT",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_JSON_DEPTH",
    "NO_BODY",
    "RequestLimitsMiddleware",
    "check_json_depth",
    "refuse_oversized",
    "too_large",
]

KiB = 1024
MiB = 1024 * KiB

# Routes that take no body: an empty one, or a stray ``{}``.
NO_BODY = 1 * KiB
# What ams-agent sends: registration (a key of at most 512 characters and a host name).
AGENT_JSON = 4 * KiB
# A password report: the blob is at most 16 KiB of ciphertext, about 22 KiB as base64.
AGENT_PASSWORD = 32 * KiB
# The admin JSON routes (API keys, certificates, directories, snapshots).
ADMIN_JSON = 8 * KiB
# One directory entry as JSON; binary values (a photo) travel base64-encoded.
DIRECTORY_ENTRY = 1 * MiB
# An LDIF import, spooled to a temporary file as it arrives (ams.api.routes.directories).
LDIF_IMPORT = 32 * MiB

# h11's limit on the request line and headers together (uvicorn's h11_max_incomplete_event_size).
MAX_HEADER_BYTES = 16 * KiB
MAX_HEADER_FIELDS = 100
# No AMS body nests deeper than about 4; the JSON parser itself gives up near 1000.
MAX_JSON_DEPTH = 32


def too_large(limit: int | None) -> RequestTooLarge:
    if limit is None:
        return RequestTooLarge()
    return RequestTooLarge(
        f"the request body is larger than {limit} bytes, the most this route takes: send less "
        "(docs/operations.md lists the limits)"
    )


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None  # the HTTP server refuses a malformed Content-Length before the app


def check_json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """BadInput when ``value`` (parsed JSON) nests arrays and objects deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    raise BadInput(
                        f"the JSON body nests arrays and objects more than {limit} deep: "
                        "no AMS request needs that; send a flat body"
                    )
                stack.append((child, depth + 1))


async def refuse_oversized(request: Request) -> None:
    """App-wide dependency, before authentication and the route: the declared body size
    against the route's limit (a route that reads a body has already refused it while
    reading), and the nesting of a JSON body (already parsed, and cached, by then)."""
    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    declared = _declared_length(request.headers)
    if limit is not None and declared is not None and declared > limit:
        raise too_large(limit)
    route = request.scope.get("route")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if getattr(route, "body_field", None) is None or not content_type.endswith(("/json", "+json")):
        return
    if await request.body():  # both cached by FastAPI, which has read and parsed the body
        check_json_depth(await request.json())


def _headers_refusal(raw: list[tuple[bytes, bytes]]) -> RequestTooLarge | None:
    if len(raw) > MAX_HEADER_FIELDS:
        return RequestTooLarge(
            f"the request has {len(raw)} header fields, more than {MAX_HEADER_FIELDS}: send fewer"
        )
    size = sum(len(name) + len(value) + 4 for name, value in raw)
    if size > MAX_HEADER_BYTES:
        return RequestTooLarge(
            f"the request headers take {size} bytes, more than {MAX_HEADER_BYTES}: send less"
        )
    return None


class RequestLimitsMiddleware:
    """Headers over the limits: 431. Starlette's plain-text 413: the AMS error shape. An
    answer that leaves a body unread: ``Connection: close``.

    A pure ASGI middleware (it never buffers a body); it sits outside the routes, where
    Starlette's body limiter answers a declared ``Content-Length`` over the limit.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _headers_refusal(scope["headers"])
        if refusal is not None:
            await _send_error(send, 431, refusal.to_dict())
            return
        headers = Headers(scope=scope)
        body_read = not (headers.get("content-length", "0") != "0" or "transfer-encoding" in headers)
        replaced = False

        async def receive_counted() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def send_shaped(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of Starlette's plain-text answer
            if message["type"] == "http.response.start":
                answer = Headers(raw=message.get("headers", []))
                plain = not answer.get("content-type", "").startswith("application/json")
                if message["status"] == 413 and plain:
                    replaced = True
                    await _send_error(send, 413, too_large(scope.get(MAX_BODY_SIZE_SCOPE_KEY)).to_dict())
                    return
                if not body_read and "connection" not in answer:
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        await self.app(scope, receive_counted, send_shaped)


_CLOSE = (b"connection", b"close")


async def _send_error(send: Send, status: int, body: dict[str, object]) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                # The body that was refused may still be arriving: end the connection.
                _CLOSE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
