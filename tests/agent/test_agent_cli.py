"""ams-agent in detail, in-process: passwords, the state file, setters, retries, bad input.

The whole path against a real `ams serve` is in tests/e2e/test_e2e_agents.py.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ams.agent import main as agent_main
from ams.agent.client import AgentClient, RetryPolicy, normalise_server_url, retry_after
from ams.agent.passwords import ALPHABET, CLASSES, MAX_LENGTH, MIN_LENGTH, generate_password
from ams.agent.rotation import CheckIn, check_in
from ams.agent.setters import ChpasswdSetter, FileSetter, SetterFailed, parse_setter
from ams.agent.state import AgentState, exclusive, load_state, save_state
from ams.api import create_app
from ams.clock import ManualClock
from ams.crypto.certs import certificate_pem, generate_certificate, thumbprint
from ams.errors import (
    AgentNotRegistered,
    AgentPasswordNotSet,
    AgentServerAnswerInvalid,
    AgentServerRefused,
    AgentServerUnreachable,
    AgentStateNotPrivate,
    BadInput,
)
from ams.instance import Instance
from ams.vault import devices, passwords, regkeys
from conftest import tree_digest
from server import free_port

AGENT = Path(sys.executable).parent / "ams-agent"
TOKEN = "dev_0123456789abcdef.s3cr3t-t0ken-never-in-logs"
FAST = RetryPolicy(tries=3, base_delay=0.01, max_delay=0.02, timeout=5)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _state(server: str = "http://127.0.0.1:9", version: int | None = 3) -> AgentState:
    return AgentState(
        server=server,
        device_id="dev_0123456789abcdef",
        token=TOKEN,
        name="web-01",
        registered_at="2026-11-22T05:00:00+00:00",
        last_version=version,
    )


# -- passwords ---------------------------------------------------------------------------


def test_passwords_mix_every_class_and_avoid_look_alikes() -> None:
    seen = set()
    for length in (MIN_LENGTH, 12, 20, 64, MAX_LENGTH):
        for _ in range(50):
            password = generate_password(length)
            assert len(password) == length
            assert set(password) <= set(ALPHABET)
            assert all(set(password) & set(cls) for cls in CLASSES)
            seen.add(password)
    assert len(seen) == 250
    assert not set(ALPHABET) & set("0Oo1lI|5S2Z8B'\"`\\: \t\n")
    # Each class is really a class: letters upper/lower, digits, and the rest.
    upper, lower, digits, symbols = CLASSES
    assert set(upper) <= set(string.ascii_uppercase) and set(lower) <= set(string.ascii_lowercase)
    assert set(digits) <= set(string.digits) and not set(symbols) & set(string.ascii_letters + string.digits)


def test_password_characters_are_spread_over_the_whole_alphabet() -> None:
    counts = dict.fromkeys(ALPHABET, 0)
    for _ in range(400):
        for ch in generate_password(32):
            counts[ch] += 1
    assert min(counts.values()) > 0


@pytest.mark.parametrize("length", [0, MIN_LENGTH - 1, MAX_LENGTH + 1])
def test_password_length_out_of_bounds_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        generate_password(length)


# -- the state file ----------------------------------------------------------------------


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "state.json"
    save_state(path, _state())
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    assert _mode(path) == 0o600
    assert load_state(path) == _state()
    data = json.loads(path.read_text())
    assert data == {
        **data,
        "format": 1,
        "token": TOKEN,
        "last_version": 3,
        "device_id": "dev_0123456789abcdef",
    }
    assert TOKEN not in repr(load_state(path))
    save_state(path, _state().with_version(4))
    assert load_state(path).last_version == 4 and _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o1777])
def test_a_state_folder_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    # The folder is not tightened (it may be shared, like /tmp): refused, nothing written.
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(AgentStateNotPrivate, match=rf"mode {mode:04o}.*chmod 700 {folder}"):
        save_state(folder / "state.json", _state())
    assert list(folder.iterdir()) == [] and _mode(folder) == mode
    with pytest.raises(AgentStateNotPrivate):
        exclusive(folder / "state.json").__enter__()
    assert list(folder.iterdir()) == []


def test_a_state_folder_opened_later_is_refused_by_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "agent" / "state.json"
    save_state(state, _state())
    assert load_state(state) == _state()
    state.parent.chmod(0o755)
    with pytest.raises(AgentStateNotPrivate):
        load_state(state)
    before = tree_digest(tmp_path)
    code, _out, err = _agent(capsys, "run", "--once", "--state", str(state))
    assert code == 75 and "chmod 700" in _one_error_line(err)
    assert TOKEN not in err and tree_digest(tmp_path) == before
    state.parent.chmod(0o700)
    assert load_state(state) == _state()


def test_state_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state(version=3))
    before = path.read_bytes()

    def crash(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_state(path, _state(version=4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_existing_state_is_never_replaced_by_register(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert save_state(path, _state(version=7), replace=False) is True
    before = path.read_bytes()
    assert save_state(path, _state(version=None), replace=False) is False
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format": 99}', "newer ams-agent"),
        (b'{"format": 1, "server": "http://x"}', "device_id missing"),
        (
            json.dumps({**_state().to_dict(), "last_version": "three"}).encode(),
            "last_version",
        ),
        (b"\xff\xfe", "not JSON"),
        (json.dumps({**_state().to_dict(), "server": "ams.example.com"}).encode(), "server is not"),
    ],
)
def test_a_broken_state_file_is_one_clear_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=match) as info:
        load_state(path)
    assert TOKEN not in info.value.message


def test_a_missing_state_file_means_not_registered(tmp_path: Path) -> None:
    with pytest.raises(AgentNotRegistered, match="ams-agent register"):
        load_state(tmp_path / "state.json")


# -- setters -----------------------------------------------------------------------------


def test_the_file_setter_writes_only_the_password_0600(tmp_path: Path) -> None:
    target = tmp_path / "password"
    target.write_text("old\n")
    target.chmod(0o644)
    FileSetter(target).set("root", "Nw7!pass-Word")
    assert target.read_bytes() == b"Nw7!pass-Word"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["password"]


def test_the_file_setter_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(SetterFailed, match="could not write") as info:
        FileSetter(tmp_path / "missing" / "password").set("root", "Nw7!pass-Word")
    assert "Nw7!pass-Word" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _fake_chpasswd(tmp_path: Path, status: int = 0) -> Path:
    script = tmp_path / "chpasswd"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/argv"\n'
        f'cat > "{tmp_path}/stdin"\n'
        f'if [ {status} -ne 0 ]; then cat "{tmp_path}/stdin" >&2; exit {status}; fi\n'
    )
    script.chmod(0o700)
    return script


def test_chpasswd_gets_the_password_on_stdin_never_as_an_argument(tmp_path: Path) -> None:
    script = _fake_chpasswd(tmp_path)
    ChpasswdSetter(command=str(script)).set("admin", "Nw7!pass-Word")
    assert (tmp_path / "stdin").read_text() == "admin:Nw7!pass-Word\n"
    assert "Nw7!pass-Word" not in (tmp_path / "argv").read_text()


def test_chpasswd_failures_never_echo_the_password(tmp_path: Path) -> None:
    script = _fake_chpasswd(tmp_path, status=1)
    with pytest.raises(SetterFailed, match="exited with status 1") as info:
        ChpasswdSetter(command=str(script)).set("admin", "Nw7!pass-Word")
    assert "Nw7!pass-Word" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(SetterFailed, match="not installed"):
        ChpasswdSetter(command=str(tmp_path / "nothing-here")).set("admin", "Nw7!pass-Word")
    with pytest.raises(SetterFailed, match="account name"):
        ChpasswdSetter(command=str(script)).set("ad:min", "Nw7!pass-Word")


def test_a_failed_chpasswd_is_reported_whole(tmp_path: Path) -> None:
    # What chpasswd on Debian says when PAM refuses: the reason is on the second line.
    script = tmp_path / "chpasswd"
    script.write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        "echo 'chpasswd: (user admin) pam_chauthtok() failed, error:' >&2\n"
        "echo 'Authentication token manipulation error' >&2\n"
        "echo 'chpasswd: (line 1, user admin) password not changed' >&2\nexit 1\n"
    )
    script.chmod(0o700)
    with pytest.raises(SetterFailed) as info:
        ChpasswdSetter(command=str(script)).set("admin", "Nw7!pass-Word")
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(
        "pam_chauthtok() failed, error: / Authentication token manipulation error / "
        "chpasswd: (line 1, user admin) password not changed"
    )


def test_setter_specs(tmp_path: Path) -> None:
    assert isinstance(parse_setter("chpasswd"), ChpasswdSetter)
    assert parse_setter(f"file:{tmp_path}/pw") == FileSetter(tmp_path / "pw")
    for bad in ("file:", "chpass", "script:/bin/true", ""):
        with pytest.raises(BadInput, match="--setter"):
            parse_setter(bad)


# -- retries -----------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(tries=5, base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for failures in range(1, 12):
        ceiling = min(8.0, 2.0 ** (failures - 1))
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jitter: agents that failed together do not retry together
    # The worst case of a default request: bounded, well inside the 60-second rollback window.
    default = RetryPolicy()
    worst = sum(min(default.max_delay, default.base_delay * 2 ** (n - 1)) for n in range(1, default.tries))
    assert worst == 15.0
    with pytest.raises(BadInput):
        RetryPolicy(tries=0)


def test_an_unreachable_server_is_retried_a_bounded_number_of_times(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"
    with (
        caplog.at_level(logging.WARNING, logger="ams.agent"),
        AgentClient(url, token=TOKEN, retry=FAST, sleep=slept.append) as client,
        pytest.raises(AgentServerUnreachable, match="failed 3 time"),
    ):
        client.check(3)
    assert len(slept) == 2 and all(0.005 <= s <= 0.02 for s in slept)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "GET /api/v1/agent/password failed (ConnectError" in lines[0] and "try 2 of 3" in lines[0]
    assert "try 3 of 3" in lines[1]
    assert TOKEN not in caplog.text


class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script; for what a real AMS cannot be made to do (a 503, a lying answer)."""

    server: _ScriptedServer

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append((self.command, self.path, headers, body))
        status, answer, *extra = self.server.script.pop(0)
        if status == 0:  # drop the connection without an answer
            self.close_connection = True
            return
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in (extra[0] if extra else {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *_args: Any) -> None:
        pass


class _ScriptedServer(ThreadingHTTPServer):
    def __init__(self, script: list[tuple[Any, ...]]) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[_ScriptedServer] = []

    def start(script: list[tuple[Any, ...]]) -> _ScriptedServer:
        server = _ScriptedServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_busy_server_is_retried_then_answers(scripted: Any, caplog: pytest.LogCaptureFixture) -> None:
    busy = {"error": "master_key_locked", "message": "master key locked: run `ams security unlock`"}
    server = scripted([(503, busy), (502, {}), (200, {"rotate": False, "current_version": 3})])
    with (
        caplog.at_level(logging.WARNING, logger="ams.agent"),
        AgentClient(server.url, token=TOKEN, retry=FAST) as c,
    ):
        assert c.check(3) == {"rotate": False, "current_version": 3}
    assert [(m, p) for m, p, _h, _b in server.seen] == [("GET", "/api/v1/agent/password?version=3")] * 3
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _m, _p, h, _b in server.seen)
    assert "(HTTP 503 master_key_locked)" in caplog.text and "(HTTP 502)" in caplog.text
    assert TOKEN not in caplog.text


BUSY = {"error": "master_key_locked", "message": "master key locked: run `ams security unlock`"}


def test_a_busy_servers_retry_after_is_waited_for(scripted: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = scripted(
        [(503, BUSY, {"Retry-After": "7"}), (429, {}, {"Retry-After": "garbage"}), (200, {"rotate": False})]
    )
    waits: list[float] = []
    policy = RetryPolicy(tries=3, base_delay=0.01, max_delay=30, timeout=5)
    with (
        caplog.at_level(logging.WARNING, logger="ams.agent"),
        AgentClient(server.url, token=TOKEN, retry=policy, sleep=waits.append) as client,
    ):
        assert client.check(3) == {"rotate": False}
    assert len(server.seen) == 3
    # At least what the server asked for, at most a quarter more (so a fleet spreads out);
    # a Retry-After that is neither seconds nor a date is ignored: the usual backoff.
    assert 7 <= waits[0] <= 8.75 and waits[1] <= 0.02, waits
    assert "(HTTP 503 master_key_locked, Retry-After 7 s); try 2 of 3" in caplog.text
    assert "(HTTP 429)" in caplog.text


def test_a_retry_after_longer_than_max_delay_ends_the_request_at_once(scripted: Any) -> None:
    server = scripted([(503, BUSY, {"Retry-After": "60"})])
    waits: list[float] = []
    policy = RetryPolicy(tries=5, base_delay=1, max_delay=30, timeout=5)
    with (
        AgentClient(server.url, token=TOKEN, retry=policy, sleep=waits.append) as client,
        pytest.raises(AgentServerUnreachable) as info,
    ):
        client.report("Administrator", 4, "YmxvYg==")
    assert len(server.seen) == 1 and waits == []
    message = info.value.message
    assert "Retry-After 60 s" in message and "--max-delay (30 s)" in message and "next run" in message
    assert TOKEN not in message


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120 and retry_after(" 0 ", now) == 0
    assert retry_after("Fri, 04 Dec 2026 12:00:05 GMT", now) == 5
    assert retry_after("Fri, 04 Dec 2026 11:00:00 GMT", now) == 0  # already past
    for bad in (None, "", "-5", "1.5", "soon", "٣", "Fri, 99 Foo 2026 12:00:05 GMT"):
        assert retry_after(bad, now) is None, bad


def test_a_refusal_is_not_retried(scripted: Any) -> None:
    server = scripted([(403, {"error": "device_pending_approval", "message": "run `ams device approve`"})])
    with (
        AgentClient(server.url, token=TOKEN, retry=FAST) as client,
        pytest.raises(AgentServerRefused) as info,
    ):
        client.check(None)
    assert "HTTP 403 device_pending_approval" in info.value.message
    assert [p for _m, p, _h, _b in server.seen] == ["/api/v1/agent/password?version="]


def test_a_registration_that_may_have_arrived_is_not_sent_twice(scripted: Any) -> None:
    server = scripted([(0, None), (201, {"device_id": "dev_1", "token": "dev_1.x", "status": "active"})])
    client = AgentClient(server.url, retry=FAST)
    with client, pytest.raises(AgentServerUnreachable) as info:
        client.register("rk_1.secret", "web-01")
    assert "may have been sent" in info.value.message and "rk_1.secret" not in info.value.message
    assert len(server.seen) == 1


def test_a_report_whose_answer_was_lost_is_sent_again_unchanged(scripted: Any) -> None:
    accepted = {"request_id": "pr_1", "version": 4}
    server = scripted([(0, None), (201, accepted)])
    with AgentClient(server.url, token=TOKEN, retry=FAST) as client:
        assert client.report("root", 4, "YmxvYg==") == accepted
    assert [(m, p) for m, p, _h, _b in server.seen] == [("POST", "/api/v1/agent/password")] * 2
    assert (
        json.loads(server.seen[0][3])
        == json.loads(server.seen[1][3])
        == {
            "account": "root",
            "version": 4,
            "blob": "YmxvYg==",
        }
    )


def test_an_answer_that_is_not_ams_is_refused(scripted: Any) -> None:
    server = scripted([(200, ["a", "list"]), (201, {"device_id": "dev_1"})])
    with AgentClient(server.url, retry=FAST) as client:
        with pytest.raises(AgentServerAnswerInvalid, match="no JSON object"):
            client.check(1)
        with pytest.raises(AgentServerAnswerInvalid, match="'token'"):
            client.register("rk_1.secret", "web-01")


@pytest.mark.parametrize(
    "url",
    [
        "foo",
        "ftp://ams.example.com",
        "http://",
        "https://user:pw@ams.example.com",
        "http://h:99999",
        "http://h/?q=1",
    ],
)
def test_unusable_server_urls(url: str) -> None:
    with pytest.raises(BadInput, match="--server"):
        normalise_server_url(url)


def test_server_urls_are_normalised() -> None:
    assert normalise_server_url(" https://ams.example.com/ ") == "https://ams.example.com"
    assert normalise_server_url("http://127.0.0.1:8080/ams/") == "http://127.0.0.1:8080/ams"


# -- the command line, in-process --------------------------------------------------------


def _agent(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = agent_main.run(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "stdin", "status", "match"),
    [
        (["--server", "nonsense", "--registration-key-stdin"], "rk_1.s\n", 12, "--server 'nonsense'"),
        (["--server", "http://127.0.0.1:9"], "", 12, "exactly one of them"),
        (
            ["--server", "http://127.0.0.1:9", "--registration-key", "rk_1.s", "--registration-key-stdin"],
            "",
            12,
            "exactly one",
        ),
        (["--server", "http://127.0.0.1:9", "--registration-key-stdin"], "", 12, "no registration key"),
        (
            ["--server", "http://127.0.0.1:9", "--registration-key-stdin"],
            "just-a-word\n",
            12,
            "<id>.<secret>",
        ),
        (
            ["--server", "http://127.0.0.1:9", "--registration-key-stdin", "--name", " "],
            "rk_1.s\n",
            12,
            "--name",
        ),
    ],
)
def test_register_refuses_bad_input_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    stdin: str,
    status: int,
    match: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
    state = tmp_path / "agent" / "state.json"
    before = tree_digest(tmp_path)
    code, _out, err = _agent(capsys, "register", *args, "--state", str(state))
    assert code == status
    assert match in _one_error_line(err)
    assert tree_digest(tmp_path) == before


def test_register_with_an_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "agent" / "state.json"
    server = f"http://127.0.0.1:{free_port()}"
    args = ["--registration-key", "rk_1.secret", "--state", str(state), "--tries", "2", "--max-delay", "0.01"]
    code, _out, err = _agent(capsys, "register", "--server", server, *args)
    assert code == 91
    assert "failed 2 time(s)" in _one_error_line(err)
    assert "try 2 of 2" in err and "rk_1.secret" not in err
    assert not state.parent.exists()


def test_register_refuses_an_open_folder_before_asking_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "agent"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens: 91 if it were asked
    args = ["--server", server, "--registration-key", "rk_1.secret", "--state", str(folder / "state.json")]
    code, _out, err = _agent(capsys, "register", *args, "--tries", "1")
    assert code == 75 and f"chmod 700 {folder}" in _one_error_line(err)
    assert list(folder.iterdir()) == [] and _mode(folder) == 0o755


def test_register_refuses_to_replace_a_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    save_state(state, _state())
    before = tree_digest(tmp_path)
    code, _out, err = _agent(
        capsys,
        "register",
        "--server",
        "http://127.0.0.1:9",
        "--registration-key",
        "rk_1.s",
        "--state",
        str(state),
    )
    assert code == 14 and "already registered" in _one_error_line(err)
    assert tree_digest(tmp_path) == before


def test_run_without_a_state_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _agent(capsys, "run", "--once", "--state", str(tmp_path / "s" / "state.json"))
    assert code == 90 and "ams-agent register" in _one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_run_with_a_bad_setter_or_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    save_state(state, _state())
    code, _out, err = _agent(capsys, "run", "--once", "--state", str(state), "--setter", "script:/x")
    assert code == 12 and "--setter" in _one_error_line(err)
    code, _out, err = _agent(capsys, "run", "--state", str(state), "--interval", "0")
    assert code == 2 and "--interval" in _one_error_line(err)
    for account in ("ad:min", "two words", ""):
        code, _out, err = _agent(capsys, "run", "--once", "--state", str(state), "--account", account)
        assert code == 12 and "--account" in _one_error_line(err)


def test_run_once_against_an_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    save_state(state, _state(server=f"http://127.0.0.1:{free_port()}"))
    before = state.read_bytes()
    code, _out, err = _agent(
        capsys, "run", "--once", "--state", str(state), "--tries", "2", "--max-delay", "0"
    )
    assert code == 91 and "failed 2 time(s)" in _one_error_line(err)
    assert TOKEN not in err
    assert state.read_bytes() == before


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ams import __version__

    assert _agent(capsys, "--version")[:2] == (0, f"ams-agent {__version__}\n")
    code, out, _err = _agent(capsys)
    assert code == 0 and "register" in out and "run" in out


# -- the installed command ---------------------------------------------------------------


def test_the_installed_command_reports_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(AGENT), "run", "--once", "--state", str(tmp_path / "state.json")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 90
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no agent state at ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_loop_stops_cleanly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state.json"
    save_state(state, _state(server=f"http://127.0.0.1:{free_port()}"))
    args = ["--state", str(state), "--interval", "30", "--tries", "1", "--setter", "file:/dev/null"]
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(AGENT), "run", *args], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        # Wait for the first (failed) check-in, then signal while the loop waits for the next.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "ConnectError" not in log.read_text():
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "ConnectError" in err and f"{sig.name} received" in err and err.rstrip().endswith("stopped")
    assert "Traceback" not in err and TOKEN not in err and out == ""


# -- one check-in, in-process against the real service -----------------------------------


class _RecordingSetter:
    """Sets nothing; records what the server held at the moment it was asked to set."""

    description = "recording"

    def __init__(
        self, instance: Instance | None = None, fail_with: str | None = None, clock: ManualClock | None = None
    ) -> None:
        self.instance = instance
        self.fail_with = fail_with
        self.clock = clock
        self.calls: list[tuple[str, str, bool]] = []

    def set(self, account: str, password: str) -> None:
        # Each read costs an RSA private key load on the server side: only where it proves something.
        held = (
            self.instance is not None
            and passwords.read(self.instance, "web-01", "test")["password"] == password
        )
        self.calls.append((account, password, held))
        if self.clock is not None:
            self.clock.advance(timedelta(seconds=61))  # past the rollback window
        if self.fail_with:
            raise SetterFailed(self.fail_with)


@pytest.fixture
def registered(instance: Instance, tmp_path: Path) -> Iterator[tuple[TestClient, AgentState, Path]]:
    with TestClient(create_app(instance)) as http:
        key = regkeys.create(instance, "fleet", "test").key
        with AgentClient("http://testserver", client=http, retry=FAST) as anonymous:
            answer = anonymous.register(key, "web-01")
        state = AgentState(
            server="http://testserver",
            device_id=answer["device_id"],
            token=answer["token"],
            name="web-01",
            registered_at="2026-11-22T05:00:00+00:00",
        )
        path = tmp_path / "state.json"
        save_state(path, state)
        yield http, state, path


def _check_in(http: TestClient, path: Path, setter: Any) -> CheckIn:
    state = load_state(path)
    with AgentClient(state.server, token=state.token, client=http, retry=FAST) as client:
        return check_in(state, path, client, setter)


def test_the_server_holds_the_password_before_it_is_set(
    registered: tuple[TestClient, AgentState, Path], instance: Instance
) -> None:
    http, _state0, path = registered
    setter = _RecordingSetter(instance)
    result = _check_in(http, path, setter)
    assert (result.rotated, result.reason, result.version) == (True, "new", 1)
    [(account, password, held)] = setter.calls
    assert held, "the password was set before the server held it"
    assert account == passwords.read(instance, "web-01", "test")["account"]
    assert load_state(path).last_version == 1
    assert _check_in(http, path, setter) == CheckIn(rotated=False, reason=None, version=1)
    assert len(setter.calls) == 1


def test_a_failed_set_is_undone_or_repaired_by_the_next_check_in(
    registered: tuple[TestClient, AgentState, Path], instance: Instance, clock: ManualClock
) -> None:
    http, _state0, path = registered
    _check_in(http, path, _RecordingSetter())
    first = passwords.read(instance, "web-01", "test")

    # Inside the rollback window: the report is undone, the server's current is the old one.
    devices.expire(instance, "test", device="web-01")
    with pytest.raises(AgentPasswordNotSet, match="update was undone") as info:
        _check_in(http, path, _RecordingSetter(fail_with="disk full"))
    assert "disk full" in info.value.message
    assert passwords.read(instance, "web-01", "test")["password"] == first["password"]
    assert load_state(path).last_version == 1

    # Past the window, the undo is refused: the device keeps its old password, which the
    # server keeps in history, and the next check-in rotates again (reason rollback).
    late = _RecordingSetter(fail_with="disk full", clock=clock)
    with pytest.raises(AgentPasswordNotSet, match="could not be undone") as info:
        _check_in(http, path, late)
    [(_account, unset, _held)] = late.calls
    assert unset not in info.value.message
    assert load_state(path).last_version == 1
    history = passwords.read(instance, "web-01", "test", history=True)
    assert first["password"] in [h["password"] for h in history["history"]]
    result = _check_in(http, path, _RecordingSetter())
    assert (result.rotated, result.reason) == (True, "rollback")


def test_a_certificate_that_does_not_match_its_thumbprint_is_refused(scripted: Any, tmp_path: Path) -> None:
    der, _key = generate_certificate("not-the-named-one", key_size=2048)
    advice = {
        "rotate": True,
        "reason": "new",
        "current_version": None,
        "next_version": 1,
        "certificate": {"thumbprint": "ab" * 32, "pem": certificate_pem(der)},
        "policy": {"length": 20, "max_age_days": 30, "account": "root"},
    }
    bad_policy = {**advice, "certificate": {"thumbprint": thumbprint(der), "pem": certificate_pem(der)}}
    bad_policy["policy"] = {"length": 4, "max_age_days": 30, "account": "root"}
    bad_account = {**bad_policy, "policy": {"length": 20, "max_age_days": 30, "account": "ad:min"}}
    junk = {**advice, "certificate": {"pem": "junk"}}
    server = scripted([(200, advice), (200, bad_policy), (200, bad_account), (200, junk)])
    path = tmp_path / "state.json"
    save_state(path, _state(server=server.url, version=None))
    before = path.read_bytes()
    setter = FileSetter(tmp_path / "password")
    with AgentClient(server.url, token=TOKEN, retry=FAST) as client:
        with pytest.raises(AgentServerAnswerInvalid, match=f"sent one whose thumbprint is {thumbprint(der)}"):
            check_in(load_state(path), path, client, setter)
        with pytest.raises(AgentServerAnswerInvalid, match="length 4"):
            check_in(load_state(path), path, client, setter)
        with pytest.raises(AgentServerAnswerInvalid, match="no usable account"):
            check_in(load_state(path), path, client, setter)
        with pytest.raises(AgentServerAnswerInvalid, match="not a readable PEM"):
            check_in(load_state(path), path, client, setter)
    assert [m for m, _p, _h, _b in server.seen] == ["GET"] * 4
    assert path.read_bytes() == before and not (tmp_path / "password").exists()


def test_a_pending_device_is_told_to_wait_for_approval(instance: Instance, tmp_path: Path) -> None:
    with TestClient(create_app(instance)) as http:
        key = regkeys.create(instance, "approved-only", "test", approval=True).key
        with AgentClient("http://testserver", client=http, retry=FAST) as anonymous:
            answer = anonymous.register(key, "web-02")
        assert answer["status"] == "pending"
        path = tmp_path / "state.json"
        device, token = answer["device_id"], answer["token"]
        save_state(path, AgentState("http://testserver", device, token, "web-02", "2026-11-22T05:00:00Z"))
        with pytest.raises(AgentServerRefused, match="device_pending_approval"):
            _check_in(http, path, FileSetter(tmp_path / "password"))
        assert load_state(path).last_version is None and not (tmp_path / "password").exists()


def test_one_agent_per_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    save_state(state, _state())
    with exclusive(state):
        code, _out, err = _agent(capsys, "run", "--once", "--state", str(state), "--setter", "file:/dev/null")
    assert code == 15 and "another ams-agent is using" in _one_error_line(err)
