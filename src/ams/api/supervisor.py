"""``ams serve --workers N``: N worker processes answering on one listening socket.

The supervising process (the one ``ams serve`` started as) opens the instance, holds
``run/ams.lock``, binds the socket and records the start; then it starts the shared-state
process (ams.security.shared), lets go of its database connections and forks the workers.
Each worker inherits the socket, the loaded code and the unlocked keyring, opens database
connections of its own (a pool per process) and runs uvicorn on the socket; the kernel
hands each new connection to one of them. Forking (not spawning) is what makes a worker
ready in milliseconds instead of importing everything again.

The supervisor only watches: it waits for SIGTERM, SIGINT or a worker's end. A worker that
ends while the service runs is replaced (at most :data:`MAX_RESTARTS` in
:data:`RESTART_WINDOW` seconds; past that the service stops with an error rather than
spin). SIGTERM or SIGINT is passed on to every worker, each finishes its requests
(uvicorn's graceful shutdown) and stops its jobs, and the supervisor waits for them
(:data:`STOP_TIMEOUT`, then SIGKILL) before it records the stop and releases the lock. A
worker whose supervisor dies gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``).

Other processes of the service (the LDAP listener) are forked, replaced and stopped the
same way (:class:`Process`). The supervisor itself never runs a thread: it forks again
while the service runs, and a thread holding a lock (the logging module's, SQLite's, a
connection pool's) at that moment would leave the lock held forever in the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ams import audit
from ams.instance import Instance
from ams.security.shared import SharedCounters

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW", "STOP_TIMEOUT", "Process", "run_workers"]

log = logging.getLogger("ams.serve")

STOP_TIMEOUT = 25.0
MAX_RESTARTS = 10
RESTART_WINDOW = 60.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Process:
    """A process of the service besides the workers: ``run(instance)`` in a forked child,
    with its own database connections, until SIGTERM (it returns then)."""

    name: str  # in the log and in event 1006 ("ldap")
    run: Callable[[Instance], Any]


def _die_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(0)


# Descriptors that no forked process keeps (the service lock: a worker or the shared-state
# process holding a copy would keep `ams serve`'s lock taken after the supervisor is killed,
# until the kernel's PDEATHSIG reaches it, and `ams status` would say a service runs).
_NOT_INHERITED: list[int] = []


def _close_inherited() -> None:
    for fd in _NOT_INHERITED:
        with contextlib.suppress(OSError):
            os.close(fd)


# The listening sockets (HTTP and LDAP): the shared-state process serves none of them.
_LISTENING: list[int] = []


def _quiet_shared_state() -> None:
    """In the shared-state process: the supervisor stops it, last; signals meant for the
    group (Ctrl-C, systemd's SIGTERM to the unit) leave it to finish the workers' last calls."""
    _close_inherited()
    for fd in _LISTENING:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(os.getppid(), signal.SIGKILL)  # it ignores SIGTERM


def _child(
    instance: Instance,
    counters: SharedCounters,
    run: Callable[[Instance], Any],
    parent: int,
    mask: set[int | signal.Signals],
) -> int:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent(parent)
    # The supervisor's pooled connections (none are open: it disposed of them) stay its own.
    instance.engine.dispose(close=False)
    instance.auth_throttle, instance.login_slowdown = counters.connect()  # type: ignore[assignment]
    run(instance)
    return 0


def _fork(
    instance: Instance,
    process: Process,
    counters: SharedCounters,
    mask: set[int | signal.Signals],
) -> int:
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    _close_inherited()
    code = 1
    try:
        code = _child(instance, counters, process.run, parent, mask)
    except BaseException:  # noqa: BLE001 - a child never returns into the supervisor's code
        log.exception("%s %d failed", process.name, os.getpid())
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def _serve_on(
    serve: Callable[[Instance, socket.socket], Any], sock: socket.socket, instance: Instance
) -> Any:
    return serve(instance, sock)


def _reap(children: dict[int, Process]) -> list[tuple[int, int, Process]]:
    """The children that ended (pid, exit status, what it ran), taken out of ``children``."""
    ended = []
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            ended.append((pid, os.waitstatus_to_exitcode(status), children.pop(pid)))
    return ended


def _stop(children: dict[int, Process]) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while children and time.monotonic() < deadline:
        _reap(children)
        if children:
            signal.sigtimedwait({signal.SIGCHLD}, 0.2)
    for pid, process in children.items():
        log.warning("%s %d did not stop in %.0f s: killed", process.name, pid, STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    children.clear()


def _record_replaced(instance: Instance, process: Process, pid: int, status: int, replacement: int) -> None:
    """Event 1006, written after the fork: the supervisor's connection never crosses one."""
    try:
        with instance.transaction() as session:
            audit.record(
                session,
                instance.clock,
                audit.Event.SERVICE_WORKER_REPLACED,
                actor="service",
                details={"process": process.name, "pid": pid, "status": status, "replacement": replacement},
            )
    except Exception:  # noqa: BLE001 - the service goes on; the log has the facts
        log.exception("event 1006 could not be recorded")
    finally:
        instance.engine.dispose()


def run_workers(
    instance: Instance,
    sockets: Sequence[socket.socket],
    workers: int,
    serve: Callable[[Instance, socket.socket], Any],
    *,
    others: Sequence[Process] = (),
    not_inherited: Sequence[int] = (),
    listening: Sequence[int] = (),
) -> int:
    """Fork ``workers`` processes that each call ``serve(instance, sock)``, and one process
    for each of ``others``, and supervise them until SIGTERM or SIGINT; 0 after a clean
    stop, 1 when they kept failing. Worker ``i`` serves ``sockets[i % len(sockets)]`` (one
    socket each, ams.cli.serve_cmd._listen_each), and so does the worker started in its
    place; a process of ``others`` that ends is replaced by another of its kind.
    ``listening`` are the listening sockets' descriptors, which the shared-state process
    closes (``not_inherited``: those that no forked process keeps)."""
    _NOT_INHERITED[:] = list(not_inherited)
    _LISTENING[:] = list(listening)
    counters = SharedCounters(instance.clock)
    counters.start(initializer=_quiet_shared_state)
    # No pooled database connection may cross a fork.
    instance.engine.dispose()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, Process] = {}  # pid -> what it runs
    restarts: list[float] = []
    code = 0
    try:
        for index in range(workers):
            sock = sockets[index % len(sockets)]
            worker = Process("worker", functools.partial(_serve_on, serve, sock))
            children[_fork(instance, worker, counters, mask)] = worker
        for process in others:
            pid = _fork(instance, process, counters, mask)
            children[pid] = process
            log.info("%s served by process %d", process.name.upper(), pid)
        log.info(
            "%d workers serving (pids %s)",
            workers,
            ", ".join(str(p) for p, kind in sorted(children.items()) if kind.name == "worker"),
        )
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping the %d processes", len(children))
                break
            ended = _reap(children)
            for ended_pid, status, process in ended:
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
                log.warning("%s %d ended (status %d) while serving", process.name, ended_pid, status)
            if ended and len(restarts) > MAX_RESTARTS:
                log.error(
                    "its processes ended %d times in %.0f s: the service stops", len(restarts), RESTART_WINDOW
                )
                code = 1
                break
            for ended_pid, status, process in ended:
                pid = _fork(instance, process, counters, mask)
                children[pid] = process
                log.info("%s %d started in its place", process.name, pid)
                _record_replaced(instance, process, ended_pid, status, pid)
    finally:
        _stop(children)
        counters.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return code
