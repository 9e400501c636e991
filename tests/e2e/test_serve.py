"""`ams serve` as a process: the lock, a second server, SIGTERM, a busy port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from conftest import run_ams
from server import Server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "home"
    assert run_ams("init", "--generate-recovery-password", home=root).returncode == 0
    return root


def test_second_server_is_refused_with_the_pid_and_sigterm_stops_cleanly(home: Path) -> None:
    server = Server(home)
    try:
        second = run_ams("serve", "--port", "0", home=home)
        assert second.returncode == 25
        assert f"already running on this home (pid {server.proc.pid})" in second.stderr
        assert second.stderr.count("\n") == 1
        status = json.loads(run_ams("status", "--json", home=home).stdout)
        assert status["service"] == {"running": True, "pid": server.proc.pid}
    finally:
        assert server.stop() == 0
    status = json.loads(run_ams("status", "--json", home=home).stdout)
    assert status["service"]["running"] is False
    events = json.loads(run_ams("audit", "list", "--json", "--event", "1002", home=home).stdout)
    assert len(events) == 1 and events[0]["name"] == "service_stopped"
    assert "Traceback" not in server.log.read_text()


def test_busy_port_is_a_clear_error(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_ams("serve", "--port", str(port), home=home)
    assert result.returncode == 12
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in result.stderr
    status = json.loads(run_ams("status", "--json", home=home).stdout)
    assert status["service"]["running"] is False


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket says
    IPPROTO_TCP; otherwise each kept-alive response waits for the client's delayed ACK."""
    import asyncio.base_events

    from ams.cli.serve_cmd import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        with client, accepted:
            asyncio.base_events._set_nodelay(accepted)  # what asyncio does for each connection
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_the_access_log_leaves_out_the_agents_successes_and_keeps_everything_else(home: Path) -> None:
    key = json.loads(run_ams("regkey", "create", "--name", "for-log", "--json", home=home).stdout)["key"]
    check_in = '"GET /api/v1/agent/password?version= HTTP/1.1" 200'
    refused = '"GET /api/v1/agent/password?version= HTTP/1.1" 401'
    for level, logged in (("info", False), ("debug", True)):
        with Server(home, args=["--log-level", level]) as server, server.client() as client:
            register = {"registration_key": key, "name": f"pc-{level}"}
            answer = client.post("/api/v1/agent/register", json=register)
            assert answer.status_code == 201, answer.text
            token = answer.json()["token"]
            good = {"Authorization": f"Bearer {token}"}
            assert client.get("/api/v1/agent/password?version=", headers=good).status_code == 200
            bad = {"Authorization": f"Bearer {token}x"}
            assert client.get("/api/v1/agent/password?version=", headers=bad).status_code == 401
            assert client.get("/healthz").status_code == 200
        log = server.log.read_text()
        assert (check_in in log) is logged, log  # a success of the fleet's route: debug only
        assert refused in log and '"GET /healthz HTTP/1.1" 200' in log
        assert '"POST /api/v1/agent/register HTTP/1.1" 201' in log
        assert token not in log
