"""ams serve: the service (REST API, health, metrics)."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ams.cli._common import HomeOption, opened
from ams.errors import BadInput

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("ams.serve")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; without it every kept-alive response waits ~40 ms for the
    # client's delayed ACK (headers and body go out in separate writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BadInput(f"cannot listen on {host}:{port}: {reason}; choose another --host/--port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class AMSServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the
        process before AMS releases its lock and records the stop; AMS exits 0 instead."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return AMSServer


def serve(
    home: HomeOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default from ams.toml).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (default from ams.toml, 8080).")
    ] = None,
) -> None:
    """Run the service in the foreground until SIGTERM or Ctrl-C."""
    import uvicorn

    from ams import audit
    from ams.api import create_app
    from ams.api.limits import MAX_HEADER_BYTES
    from ams.lock import ServiceLock

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with opened(home) as instance:
        lock = ServiceLock(instance.home.lock_file)
        lock.acquire()
        try:
            bind_host = host or instance.settings.server.host
            bind_port = instance.settings.server.port if port is None else port
            sock = _listen(bind_host, bind_port)
            state = str(instance.keyring.state)
            offset = getattr(instance.clock, "offset", None)
            if offset:
                log.warning("the clock is shifted by %s (AMS_CLOCK_OFFSET_SECONDS): for tests only", offset)
            if state != "unlocked":
                log.warning(
                    "master key locked (%s): secret-touching requests answer 503 until `ams security unlock`",
                    instance.keyring.lock_reason,
                )
            with instance.transaction() as session:
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.SERVICE_STARTED,
                    actor="service",
                    details={"address": f"{bind_host}:{sock.getsockname()[1]}", "master_key": state},
                )
            config = uvicorn.Config(
                create_app(instance),
                log_level="info",
                lifespan="on",
                server_header=False,
                timeout_graceful_shutdown=10,
                # h11, whose limit on the request line and headers AMS states (ams.api.limits);
                # a request over it gets 400 from the server before the app sees it.
                http="h11",
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            )
            server = _server_class()(config)
            log.info("AMS serving on http://%s:%d (master key %s)", bind_host, sock.getsockname()[1], state)
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()
                with instance.transaction() as session:
                    audit.record(session, instance.clock, audit.Event.SERVICE_STOPPED, actor="service")
        finally:
            lock.release()
