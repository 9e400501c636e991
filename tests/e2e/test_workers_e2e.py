"""End to end: `ams serve --workers 2`, two processes on one port (issue 12).

Each answer names its worker (`X-AMS-Worker`, the pid); a connection stays with the worker
that accepted it, so the test opens connections until it holds one to each worker. Then:
a rotation through one worker is read through the other; a certificate marked lost through
one is refused by the other at its very next report (its cached key is gone with the
generation number); exactly one worker runs the background jobs, and when it dies another
takes over; SIGTERM stops every process.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ams import apikeys
from ams.apikeys import Role
from ams.clock import SystemClock
from ams.crypto import blob as password_blob
from ams.crypto import certificate_from_pem
from ams.home import Home
from ams.instance import open_instance
from ams.vault import certificates, devices, regkeys
from conftest import RECOVERY_PASSWORD, run_ams
from pg import PostgresServer
from server import Server

LIMIT = 10  # ams.security.throttle.LIMIT


class Workers:
    def __init__(self, server: Server, headers: dict[str, str], address: str | None = None) -> None:
        self.server = server
        self.by_pid: dict[int, httpx.Client] = {}
        for _ in range(200):
            transport = httpx.HTTPTransport(local_address=address) if address else None
            client = httpx.Client(base_url=server.url, headers=headers, timeout=30, transport=transport)
            pid = int(client.get("/healthz").headers["x-ams-worker"])
            if pid in self.by_pid:
                client.close()
            else:
                self.by_pid[pid] = client
            if len(self.by_pid) == 2:
                return
        raise AssertionError(f"only reached workers {sorted(self.by_pid)}")

    def pair(self) -> tuple[httpx.Client, httpx.Client]:
        first, second = sorted(self.by_pid)
        return self.by_pid[first], self.by_pid[second]

    def close(self) -> None:
        for client in self.by_pid.values():
            client.close()


def _send(client: httpx.Client, method: str, path: str, **kwargs: object) -> httpx.Response:
    """A request that must be answered by the worker this client's connection reached."""
    response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    expected = int(client.get("/healthz").headers["x-ams-worker"])
    assert int(response.headers["x-ams-worker"]) == expected
    return response


def _rotate(client: httpx.Client, token: str, version: int | None) -> tuple[httpx.Response, dict[str, Any]]:
    """A check-in, then the report of a new password encrypted to the advised certificate."""
    auth = {"Authorization": f"Bearer {token}"}
    params = {"version": str(version)} if version is not None else {}
    advice = _send(client, "GET", "/api/v1/agent/password", params=params, headers=auth)
    assert advice.status_code == 200, advice.text
    body = advice.json()
    return _report(client, token, body["next_version"], body["certificate"]["pem"]), body


def _report(client: httpx.Client, token: str, version: int, pem: str) -> httpx.Response:
    document = {"account": "Administrator", "version": version, "password": f"secret-{version}"}
    blob = password_blob.encrypt_password(certificate_from_pem(pem), json.dumps(document).encode())
    return _send(
        client,
        "POST",
        "/api/v1/agent/password",
        json={"account": "Administrator", "version": version, "blob": base64.b64encode(blob).decode()},
        headers={"Authorization": f"Bearer {token}"},
    )


def _prepare(home: Path) -> tuple[str, str]:
    """An admin API key and a registered device's token, made in-process before the server starts."""
    instance = open_instance(Home(home), SystemClock())
    try:
        admin = apikeys.create(instance, "admin", Role.ADMIN, actor="test").token
        # A 2048-bit certificate made here: the server would spend seconds on RSA-4096.
        saved, certificates.KEY_SIZE = certificates.KEY_SIZE, 2048
        try:
            certificates.create(instance, "agent", "test", activate=True)
        finally:
            certificates.KEY_SIZE = saved
        key = regkeys.create(instance, "workers", "test")
        return admin, devices.register(instance, key.key, "pc-1").token
    finally:
        instance.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    home = tmp_path_factory.mktemp("workers") / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    admin, token = _prepare(home)
    server = Server(home, workers=2)
    try:
        yield server, admin, token
    finally:
        server.stop()


def test_a_rotation_through_one_worker_is_read_through_the_other_and_a_lost_key_is_refused_by_both(
    served: tuple[Server, str, str],
) -> None:
    server, admin, token = served
    workers = Workers(server, {"Authorization": f"Bearer {admin}"})
    try:
        one, other = workers.pair()
        reported, advice = _rotate(one, token, None)
        assert reported.status_code == 201, reported.text
        version = reported.json()["version"]
        device = token.partition(".")[0]
        read = _send(other, "GET", f"/api/v1/devices/{device}/password")
        assert read.status_code == 200, read.text
        assert (read.json()["version"], read.json()["password"]) == (version, f"secret-{version}")

        # The other worker rotates too: it now holds the active key in its cache.
        again, _ = _rotate(other, token, version)
        assert again.status_code == 201, again.text
        version = again.json()["version"]
        old_pem = advice["certificate"]["pem"]
        thumbprint = advice["certificate"]["thumbprint"]

        lost = _send(one, "POST", f"/api/v1/certificates/{thumbprint}/lost")
        assert lost.status_code == 200, lost.text
        replacement = lost.json()["replacement"]["thumbprint"]

        # The very next report through the other worker, to the lost key: refused.
        refused = _report(other, token, version + 1, old_pem)
        assert refused.status_code == 422, refused.text
        # ... and its next check-in hands out the new certificate: the password expired.
        check = _send(
            other, "GET", "/api/v1/agent/password", params={"version": str(version)},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        assert (check.json()["reason"], check.json()["certificate"]["thumbprint"]) == ("expired", replacement)
        moved, _ = _rotate(other, token, version)
        assert moved.status_code == 201, moved.text
    finally:
        workers.close()


def test_failed_authentications_are_counted_once_for_all_workers(served: tuple[Server, str, str]) -> None:
    server, _, _ = served
    # From an address of its own, so the other tests' requests are not throttled.
    workers = Workers(server, {"Authorization": "Bearer dev_0123456789abcdef.wrong"}, "127.0.0.3")
    try:
        one, other = workers.pair()
        answers = [
            _send(one if n % 2 else other, "GET", "/api/v1/agent/password").status_code
            for n in range(LIMIT + 1)
        ]
    finally:
        workers.close()
    # Five failures on each worker would pass a per-process count; the shared one throttles.
    assert answers == [401] * LIMIT + [429]


def _leaders(server: Server) -> dict[int, bool]:
    workers = Workers(server, {})
    try:
        seen = {}
        for pid, client in workers.by_pid.items():
            text = client.get("/metrics").text
            found = re.search(r'^ams_worker\{jobs="([01])",pid="([0-9]+)"\} 1\.0$', text, re.M)
            assert found is not None and int(found.group(2)) == pid, text
            seen[pid] = found.group(1) == "1"
        return seen
    finally:
        workers.close()


def test_exactly_one_worker_runs_the_jobs_and_another_takes_over(served: tuple[Server, str, str]) -> None:
    server, _, _ = served
    leaders = _leaders(server)
    assert sorted(leaders.values()) == [False, True]
    leader = next(pid for pid, leads in leaders.items() if leads)
    assert (server.home / "run" / "jobs.lock").read_text().strip() == str(leader)

    os.kill(leader, signal.SIGKILL)  # the supervisor starts a worker in its place
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            leaders = _leaders(server)
        except (httpx.TransportError, AssertionError):
            leaders = {}
        if leader not in leaders and sorted(leaders.values()) == [False, True]:
            break
        time.sleep(0.5)
    assert leader not in leaders and sorted(leaders.values()) == [False, True], leaders
    assert server.proc.poll() is None
    listed = run_ams("audit", "list", "--event", "1006", "--json", home=server.home)
    replaced = [e["details"] for e in json.loads(listed.stdout)]
    assert [(d["pid"], d["status"]) for d in replaced] == [(leader, -signal.SIGKILL)]
    assert replaced[0]["replacement"] in leaders


def test_sigterm_stops_every_worker(served: tuple[Server, str, str]) -> None:
    """Last in this module: it stops the module's server."""
    server, _, _ = served
    workers = Workers(server, {})
    pids = sorted(workers.by_pid)
    workers.close()
    assert server.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert "service_stopped" in run_ams("audit", "list", home=server.home).stdout
    assert not (server.home / "run" / "ams.lock").read_text().strip()


def test_on_postgresql_two_workers_share_the_database_and_one_runs_the_jobs(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    url = pg_server.create_database()
    home = tmp_path / "home"
    try:
        init = run_ams(
            "init", "--database", url, "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n"
        )
        assert init.returncode == 0, init.stderr
        admin, token = _prepare(home)
        with Server(home, workers=2) as server:
            workers = Workers(server, {"Authorization": f"Bearer {admin}"})
            try:
                one, other = workers.pair()
                reported, _ = _rotate(one, token, None)
                assert reported.status_code == 201, reported.text
                read = _send(other, "GET", f"/api/v1/devices/{token.partition('.')[0]}/password")
                assert read.json()["password"] == f"secret-{reported.json()['version']}"
            finally:
                workers.close()
            assert sorted(_leaders(server).values()) == [False, True]
    finally:
        pg_server.drop_database(url)
