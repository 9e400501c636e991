"""End to end: the LDAP listener of `ams serve --workers 2 --ldap-port N` is a process of
its own under the supervisor.

The supervisor forks a worker again when one ends; a thread of its own holding a lock at
that moment (logging's, SQLite's, a pool's) would leave the lock held forever in the new
worker. So the supervisor runs no thread: the LDAP listener is forked like a worker, is
replaced like one when it ends (event 1006 names it), and counts failed binds in the
throttle the workers share (ten failures over LDAP and the next over HTTP is refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ldap3
import pytest

from ams import audit
from ams.directory import directories
from ams.home import Home
from ams.instance import create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server, free_port

DNS = "proc.example.com"
ADMIN = f"Admin@{DNS}"
PASSWORD = "Proc-Admin-Passw0rd"
LIMIT = 10  # ams.security.throttle.LIMIT


class Served:
    def __init__(self, server: Server, ldap_port: int) -> None:
        self.server = server
        self.ldap_port = ldap_port

    def bind(self, password: str = PASSWORD, source: str = "127.0.0.1") -> int:
        """The result code of a simple bind as the directory's admin."""
        conn = ldap3.Connection(
            ldap3.Server("127.0.0.1", port=self.ldap_port, get_info=ldap3.NONE, connect_timeout=5),
            user=ADMIN, password=password, source_address=source, raise_exceptions=False,
        )  # fmt: skip
        try:
            conn.bind()
            return int(conn.result["result"])
        finally:
            conn.unbind()

    def ldap_pid(self) -> int:
        """The LDAP process now serving, as the supervisor's log names it."""
        log = self.server.log.read_text()
        started = re.findall(r"LDAP served by process (\d+)|ldap (\d+) started in its place", log)
        assert started, log
        return int(next(pid for pid in started[-1] if pid))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [child for child in pids if _safe_parent(child) == pid]


def _safe_parent(pid: int) -> int | None:
    try:
        return _parent(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


def _sockets(pid: int) -> set[str]:
    """The socket inodes among a process's descriptors."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:"):
                found.add(target)
    return found


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = Home(tmp_path_factory.mktemp("ldapproc") / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    instance = open_instance(home)
    try:
        directories.create(instance, dns_name=DNS, short_name="PROC", admin_password=PASSWORD, actor="t")
    finally:
        instance.close()
    port = free_port()
    with Server(home.root, workers=2, args=["--ldap-port", str(port)]) as server:
        yield Served(server, port)
    log = server.log.read_text()
    assert "Traceback" not in log, log


def test_the_supervisor_runs_no_thread_and_the_ldap_process_is_replaced_when_it_ends(served: Served) -> None:
    supervisor = served.server.proc.pid
    ldap = served.ldap_pid()
    assert _parent(ldap) == supervisor and ldap != supervisor
    assert served.bind() == 0
    assert _threads(supervisor) == 1
    # Only the supervisor, the workers and the LDAP process hold listening sockets: the
    # shared-state process (the throttle's) inherits none of the supervisor's.
    workers: set[int] = set()
    for _ in range(200):  # each request a new connection, which the kernel gives either worker
        workers.add(int(httpx.get(served.server.url + "/healthz").headers["x-ams-worker"]))
        if len(workers) == 2:
            break
    shared = [pid for pid in _children(supervisor) if pid != ldap and pid not in workers]
    assert len(shared) == 1 and len(_children(supervisor)) == 4, (shared, workers)
    assert not _sockets(shared[0]) & _sockets(supervisor)
    assert _sockets(ldap) & _sockets(supervisor)  # its port, which the supervisor keeps open

    # A worker forked again: the supervisor still has no thread, and LDAP still answers.
    worker = int(httpx.get(served.server.url + "/healthz").headers["x-ams-worker"])
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: "started in its place" in served.server.log.read_text(), "the worker replaced")
    assert _threads(supervisor) == 1
    assert served.bind() == 0 and served.bind("wrong") == 49

    # The LDAP process killed: another takes its place on the same port.
    os.kill(ldap, signal.SIGKILL)
    _wait(lambda: served.ldap_pid() != ldap, "the LDAP process replaced")
    assert served.bind() == 0
    assert _parent(served.ldap_pid()) == supervisor and _threads(supervisor) == 1
    listed = run_ams("audit", "list", "--event", "1006", "--json", home=served.server.home)
    assert listed.returncode == 0, listed.stderr
    replaced = {e["details"]["pid"]: e["details"] for e in json.loads(listed.stdout)}
    assert (replaced[worker]["process"], replaced[worker]["status"]) == ("worker", -signal.SIGKILL)
    assert (replaced[ldap]["process"], replaced[ldap]["replacement"]) == ("ldap", served.ldap_pid())


def test_failed_ldap_binds_count_in_the_throttle_the_workers_share(served: Served) -> None:
    # From an address of its own, so the other tests are not throttled.
    source = "127.0.0.4"
    assert [served.bind("wrong", source) for _ in range(LIMIT)] == [49] * LIMIT
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=served.server.url, transport=transport, timeout=10) as client:
        answer = client.get(
            "/api/v1/agent/password", headers={"Authorization": "Bearer dev_0123456789abcdef.wrong"}
        )
    assert answer.status_code == 429, answer.text  # the eleventh failure of the address
    assert served.bind("wrong", source) == 51  # busy: throttled over LDAP too
    assert served.bind(PASSWORD, source) == 0  # a valid credential is never refused


def test_a_taken_ldap_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_ams(
            "serve", "--port", str(free_port()), "--workers", "2", "--ldap-port", str(port), home=home.root
        )
    assert run.returncode == 12, run.stderr
    assert f"cannot listen for LDAP on 127.0.0.1:{port}: the address is already in use" in run.stderr
    assert "Traceback" not in run.stderr
    instance = open_instance(home)
    try:
        with instance.session() as session:
            assert audit.list_events(session, event_id=int(audit.Event.SERVICE_STARTED)) == []
    finally:
        instance.close()
    assert not (home.root / "run" / "ams.lock").read_text().strip()
