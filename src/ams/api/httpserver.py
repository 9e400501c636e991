"""The HTTP protocol ``ams serve`` runs under uvicorn: httptools, bounded as h11 was.

uvicorn parses HTTP with h11 (pure Python) or httptools (llhttp, in C: a third of the
CPU of a small request, docs/performance.md). AMS runs httptools when it is installed
(a dependency of AMS) and h11 otherwise. h11 stops buffering a request line and headers
at ``h11_max_incomplete_event_size``; uvicorn's httptools protocol has no such bound, so
:class:`BoundedHttpToolsProtocol` keeps it: a request whose line and headers have not
ended within :data:`ams.api.limits.MAX_HEADER_BYTES` (plus what one read may bring) gets
400 and the connection ends, as with h11. Headers that arrive whole are checked by the
application (431, ams.api.limits).

uvicorn writes an answer's status line and headers, then its body, each with its own
``send`` on the socket: two packets, and on loopback two wake-ups of the client, for each
small answer. :class:`_Coalescing` gathers what one turn of the event loop writes on a
connection and sends it at once (about a tenth of a rotation's CPU on the server, measured
with the fleet benchmark).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ams.api.fastpath import AGENT_ROUTE
from ams.api.limits import MAX_HEADER_BYTES

__all__ = ["protocol"]


class _Coalescing:
    """A transport whose writes of one event-loop turn go out in one ``send``."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# The agents' route: the fleet's check-ins and reports, each of which the audit trail (a
# stored password, a refused token) and the metrics (every answer, by status) count.
QUIET_ROUTE = AGENT_ROUTE


class _QuietSuccess:
    """uvicorn's access logger for a request of :data:`QUIET_ROUTE`: a success is logged at
    ``debug``, anything else at ``info`` as every request is. A line of the access log costs
    about a twentieth of a rotation's CPU besides its decryption (docs/performance.md), and
    a fleet of 100,000 devices would write two a rotation."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def info(self, message: str, *args: Any) -> None:
        status = args[-1] if args else 500
        if isinstance(status, int) and 200 <= status < 300:
            if self._logger.isEnabledFor(logging.DEBUG):
                self._logger.debug(message, *args)
        else:
            self._logger.info(message, *args)


def protocol() -> type[asyncio.Protocol] | str:
    """What ``uvicorn.Config(http=...)`` takes: the bounded httptools protocol, or "h11"."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, with h11's bound on a request's line and headers."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head = 0
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Coalescing(transport))  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head += len(data)
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.cycle is not None and not self.cycle.response_complete:
                    # Bytes after a request that make no next request: the request in
                    # flight is answered first, then the 400 (what h11 does).
                    self._refused = True
                    self.flow.pause_reading()
                else:
                    self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade:  # as uvicorn's own
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self._in_head and self._head > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.send_400_response("Request line and headers too large.")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._refused and not self.transport.is_closing():
                self.send_400_response("Invalid HTTP request received.")

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head = 0
            super().on_headers_complete()
            if self.scope.get("path") == QUIET_ROUTE and self.cycle is not None and self.access_log:
                self.cycle.access_logger = _QuietSuccess(self.access_logger)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head = 0

    return BoundedHttpToolsProtocol
