"""ams serve: the service (REST API, health, metrics)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import ssl
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ams.cli._common import HomeOption, opened
from ams.errors import BadInput, ServiceWorkersFailing

if TYPE_CHECKING:
    import uvicorn

    from ams.instance import Instance

log = logging.getLogger("ams.serve")


def _socket(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; without it every kept-alive response waits ~40 ms for the
    # client's delayed ACK (headers and body go out in separate writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BadInput(f"cannot listen on {host}:{port}: {reason}; choose another --host/--port") from None
    if listen:
        sock.listen(2048)
        sock.set_inheritable(True)
    return sock


def _listen(host: str, port: int) -> socket.socket:
    return _socket(host, port)


def _listen_each(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker on the same address (``SO_REUSEPORT``): the kernel
    spreads new connections evenly over them. On one shared socket, asyncio accepts up to
    100 waiting connections each time it wakes, so the first worker to wake took most of a
    burst of kept-alive connections (3/4 to 9/10 of 50, measured) and served them alone
    while the others idled. The address is first bound without ``SO_REUSEPORT`` (and
    released): a port another program holds is refused as before, not shared."""
    probe = _socket(host, port, listen=False)
    port = probe.getsockname()[1]
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_socket(host, port, reuse_port=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


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


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# Libraries whose debug output carries data (SQL parameters and rows: sealed secrets, token
# hashes, CSRF secrets; request bodies): never below WARNING, whatever --log-level says.
_QUIET_LOGGERS = ("alembic", "sqlalchemy", "multipart", "python_multipart", "httpx", "httpcore")


def _configure_logging(level: LogLevel) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _ldap_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The TLS context of ldaps and StartTLS, from PEM files; None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise BadInput("give both --ldap-tls-cert and --ldap-tls-key (PEM files), or neither")
    from ams.paths import read_file

    read_file(cert, "--ldap-tls-cert")
    read_file(key, "--ldap-tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise BadInput(
            f"cannot use {cert} and {key} for LDAP TLS: {exc.reason or exc}; give a PEM certificate and its "
            "unencrypted PEM private key"
        ) from None
    return context


def _event_loop() -> str:
    """uvloop (libuv, in C: its transports cost a fraction of asyncio's, docs/performance.md)
    when installed, as it is with AMS; else asyncio's own loop."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def _run_uvicorn(instance: Instance, sock: socket.socket, log_level: str = "info") -> None:
    """One process answering on ``sock`` until SIGTERM or SIGINT (a worker, or the whole
    service with ``--workers 1``)."""
    import uvicorn

    from ams.api import create_app
    from ams.api.httpserver import protocol
    from ams.api.limits import MAX_HEADER_BYTES

    config = uvicorn.Config(
        create_app(instance),
        log_level=log_level,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
        # httptools when installed, else h11; either stops a request line and headers
        # over AMS's limit (ams.api.limits) with 400 before the app sees it.
        http=protocol(),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        loop=_event_loop(),
    )
    _server_class()(config).run(sockets=[sock])


def serve(
    home: HomeOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default from ams.toml).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (default from ams.toml, 8080).")
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            envvar="AMS_LOG_LEVEL",
            case_sensitive=False,
            help="How much the service logs (debug adds AMS's own detail; secrets never).",
        ),
    ] = LogLevel.INFO,
    ldap_port: Annotated[
        int | None,
        typer.Option(
            "--ldap-port",
            min=0,
            max=65535,
            help="Serve the directories over LDAP on this port (off unless set).",
        ),
    ] = None,
    ldaps_port: Annotated[
        int | None,
        typer.Option(
            "--ldaps-port",
            min=0,
            max=65535,
            help="Serve LDAP over TLS (ldaps) on this port; needs the TLS files.",
        ),
    ] = None,
    ldap_host: Annotated[
        str | None, typer.Option("--ldap-host", help="Address for LDAP (default: the HTTP --host).")
    ] = None,
    ldap_tls_cert: Annotated[
        Path | None, typer.Option("--ldap-tls-cert", help="PEM certificate (chain) for ldaps and StartTLS.")
    ] = None,
    ldap_tls_key: Annotated[
        Path | None, typer.Option("--ldap-tls-key", help="PEM private key of --ldap-tls-cert (unencrypted).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="Worker processes answering on the port (default: the number of cores).",
        ),
    ] = None,
) -> None:
    """Run the service in the foreground until SIGTERM or Ctrl-C."""
    import uvicorn  # noqa: F401 - loaded once here, before the workers are forked

    from ams import audit
    from ams.api import create_app  # noqa: F401 - the same
    from ams.lock import ServiceLock

    # The LDAP options are checked before anything is opened or locked.
    tls = _ldap_tls(ldap_tls_cert, ldap_tls_key)
    if ldaps_port is not None and tls is None:
        raise BadInput("--ldaps-port needs --ldap-tls-cert and --ldap-tls-key")
    _configure_logging(log_level)
    with opened(home) as instance:
        lock = ServiceLock(instance.home.lock_file)
        lock.acquire()
        try:
            bind_host = host or instance.settings.server.host
            bind_port = instance.settings.server.port if port is None else port
            count = workers or os.cpu_count() or 1
            if count == 1:
                sockets = [_listen(bind_host, bind_port)]
            else:
                sockets = _listen_each(bind_host, bind_port, count)
            sock = sockets[0]
            ldap = None
            ldap_bound: list[tuple[str, str, int]] = []
            if ldap_port is not None or ldaps_port is not None:
                from ams.ldapserver import LdapServer

                ldap = LdapServer(
                    instance, host=ldap_host or bind_host, port=ldap_port, tls_port=ldaps_port, tls=tls
                )
                try:
                    ldap_bound = ldap.listen()
                except BadInput:
                    for listening in sockets:
                        listening.close()
                    raise
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
                    details={
                        "address": f"{bind_host}:{sock.getsockname()[1]}",
                        "master_key": state,
                        "workers": count,
                    },
                )
            log.info(
                "AMS serving on http://%s:%d (master key %s, %d worker%s)",
                bind_host,
                sock.getsockname()[1],
                state,
                count,
                "" if count == 1 else "s",
            )
            from ams.api.supervisor import MAX_RESTARTS, RESTART_WINDOW, Process, run_workers

            for protocol, address, ldap_port_bound in ldap_bound:
                log.info("AMS serving %s on %s:%d", protocol, address, ldap_port_bound)

            def serve_one(instance: Instance, sock: socket.socket) -> None:
                if count > 1 and ldap is not None:
                    ldap.close()  # the LDAP process's sockets
                _run_uvicorn(instance, sock, str(log_level))

            def serve_ldap(instance: Instance) -> None:
                assert ldap is not None
                for listening in sockets:  # the workers'
                    listening.close()
                ldap.serve(instance)

            code = 0
            try:
                if count == 1:
                    if ldap is not None:
                        ldap.start()
                    serve_one(instance, sock)
                else:
                    # The LDAP listener runs in a process of its own: the supervisor forks
                    # again when a worker ends, and must not run a thread when it does.
                    code = run_workers(
                        instance,
                        sockets,
                        count,
                        serve_one,
                        others=[Process("ldap", serve_ldap)] if ldap is not None else [],
                        not_inherited=[lock.fd] if lock.fd is not None else [],
                        listening=[s.fileno() for s in sockets] + (ldap.filenos() if ldap else []),
                    )
            finally:
                if ldap is not None:
                    ldap.stop()
                sock.close()
                with instance.transaction() as session:
                    audit.record(session, instance.clock, audit.Event.SERVICE_STOPPED, actor="service")
            if code:
                raise ServiceWorkersFailing(
                    f"its worker processes (or its LDAP process) ended more than {MAX_RESTARTS} times in "
                    f"{RESTART_WINDOW:.0f} seconds, so the service stopped: the log above says why they "
                    "ended; fix that and start `ams serve` again"
                )
        finally:
            lock.release()
