"""End to end: three real `ams-agent` processes against a real `ams serve`.

Registration with a real registration key, rotation with the file setter, reading every
password back with `ams password get`, a lost certificate, a state file replaced by an
older copy (rollback), a setter that fails (the report is undone), and the agent running
as a loop until SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RECOVERY_PASSWORD, Result, run_ams
from server import Server

AGENT = Path(sys.executable).parent / "ams-agent"


def _agent_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}


def run_agent(*args: str, input: str | None = None, timeout: float = 90) -> Result:
    proc = subprocess.run(
        [str(AGENT), *args], input=input, capture_output=True, text=True, env=_agent_env(), timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Agent:
    name: str
    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / "state" / "state.json"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    @property
    def device_id(self) -> str:
        return str(json.loads(self.state.read_text())["device_id"])

    def register(self, url: str, key: str) -> Result:
        return run_agent(
            "register", "--server", url, "--registration-key-stdin", "--state", str(self.state),
            "--name", self.name, input=key + "\n",
        )  # fmt: skip

    def run_once(self, setter: str | None = None) -> Result:
        setter = setter or f"file:{self.password_file}"
        return run_agent(
            "run",
            "--once",
            "--state",
            str(self.state),
            "--setter",
            setter,
            "--tries",
            "3",
            "--max-delay",
            "1",
        )


def _in_parallel(agents: list[Agent], call: Callable[[Agent], Result]) -> list[Result]:
    with ThreadPoolExecutor(len(agents)) as pool:
        return list(pool.map(call, agents))


def _json(home: Path, *args: str) -> object:
    result = run_ams(*args, "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _password(home: Path, device: str) -> dict:
    answer = _json(home, "password", "get", device)
    assert isinstance(answer, dict)
    return answer


def _passwords(home: Path, agents: list[Agent]) -> list[dict]:
    with ThreadPoolExecutor(len(agents)) as pool:
        return list(pool.map(lambda a: _password(home, a.device_id), agents))


def _active_agent_certificate(home: Path) -> str:
    certs = _json(home, "certs", "list", "--scope", "agent")
    assert isinstance(certs, list)
    active = [c["thumbprint"] for c in certs if c["scope"] == "agent" and c["state"] == "active"]
    assert len(active) == 1, certs
    return str(active[0])


def _rotated(result: Result, reason: str) -> None:
    assert result.returncode == 0, result.stderr
    assert f"(reason: {reason})" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_three_agents_rotate_read_back_and_survive_a_lost_certificate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    created = _json(home, "regkey", "create", "--name", "fleet", "--limit", "3")
    assert isinstance(created, dict)
    key = str(created["key"])
    agents = [Agent(f"web-0{i}", tmp_path / f"agent{i}") for i in range(3)]
    written: set[str] = set()

    with Server(home) as server:
        # A wrong registration key: one line, a non-zero exit, nothing written.
        stranger = Agent("stranger", tmp_path / "stranger")
        refused = stranger.register(server.url, key.split(".")[0] + ".not-the-secret")
        assert refused.returncode == 92
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: the server refused")
        assert not stranger.folder.exists()

        for result in _in_parallel(agents, lambda a: a.register(server.url, key)):
            assert result.returncode == 0, result.stderr
            assert "(status: active)" in result.stdout
        for agent in agents:
            assert stat.S_IMODE(agent.state.stat().st_mode) == 0o600
            assert stat.S_IMODE(agent.state.parent.stat().st_mode) == 0o700
        assert len({a.device_id for a in agents}) == 3
        # The key's limit of three is used up.
        fourth = stranger.register(server.url, key)
        assert fourth.returncode == 92 and "error: " in fourth.stderr and not stranger.folder.exists()

        # First check-in: every agent makes, reports and sets its first password. They race
        # for the agent scope's first certificate: one is generated and all three use it.
        for result in _in_parallel(agents, Agent.run_once):
            _rotated(result, "new")
        first_certificate = _active_agent_certificate(home)
        for agent, stored in zip(agents, _passwords(home, agents), strict=True):
            assert stat.S_IMODE(agent.password_file.stat().st_mode) == 0o600
            assert stored["password"] == agent.password_file.read_text()
            assert stored["device_name"] == agent.name and stored["version"] == 1
            assert stored["certificate_thumbprint"] == first_certificate
            assert json.loads(agent.state.read_text())["last_version"] == 1
            written.add(stored["password"])
        assert len(written) == 3

        # Nothing to do on the next check-in.
        same = agents[0].password_file.read_text()
        quiet = agents[0].run_once()
        assert quiet.returncode == 0 and "nothing to do" in quiet.stderr, quiet.stderr
        assert agents[0].password_file.read_text() == same

        older_state = tmp_path / "state-copy.json"
        shutil.copy2(agents[0].state, older_state)

        # The active certificate's private key is lost: every device rotates to the new one.
        lost = run_ams("certs", "lost", first_certificate, home=home)
        assert lost.returncode == 0, lost.stderr
        second_certificate = _active_agent_certificate(home)
        assert second_certificate != first_certificate
        for result in _in_parallel(agents, Agent.run_once):
            _rotated(result, "expired")
            assert second_certificate in result.stderr
        for agent, stored in zip(agents, _passwords(home, agents), strict=True):
            assert stored["password"] == agent.password_file.read_text()
            assert stored["certificate_thumbprint"] == second_certificate and stored["version"] == 2
            written.add(stored["password"])
        assert len(written) == 6
        # The first password of each is under the lost key: listed, and unrecoverable.
        history = _json(home, "password", "get", agents[2].device_id, "--history")
        assert isinstance(history, dict)
        old = [(h["version"], h["recoverable"], h["password"]) for h in history["history"]]
        assert old == [(1, False, None)]

        # The state file is replaced by an older copy: the server sees version 1 where it
        # holds 2, and the agent rotates with reason rollback, recorded in the audit trail.
        shutil.copy2(older_state, agents[0].state)
        _rotated(agents[0].run_once(), "rollback")
        stored = _password(home, agents[0].device_id)
        assert stored["password"] == agents[0].password_file.read_text() and stored["version"] == 3
        rollbacks = _json(home, "audit", "list", "--event", "1410")
        assert isinstance(rollbacks, list)
        assert [(e["target"], e["details"]) for e in rollbacks] == [
            (agents[0].device_id, {"device_version": 1, "server_version": 2})
        ]
        written.add(stored["password"])

        # A setter that fails: the report is undone, the device and the server keep the old password.
        target = agents[1]
        expire = run_ams("device", "expire", target.device_id, home=home)
        assert expire.returncode == 0, expire.stderr
        before = target.password_file.read_text()  # read back from the server above, as version 2
        failed = target.run_once(setter=f"file:{tmp_path}/no-such-folder/password")
        assert failed.returncode == 93, failed.stderr
        assert failed.stderr.splitlines()[-1].startswith("error: could not set the new password")
        assert "undone" in failed.stderr and "Traceback" not in failed.stderr
        after = _password(home, target.device_id)
        assert after["password"] == before == target.password_file.read_text()
        assert after["version"] == 2
        assert json.loads(target.state.read_text())["last_version"] == 2
        # The forced rotation is still pending, and goes through with a working setter.
        _rotated(target.run_once(), "forced")
        assert target.password_file.read_text() != before
        written.add(target.password_file.read_text())

        # The agent as a service: a loop that rotates when asked, and stops cleanly on SIGTERM.
        looping = agents[2]
        assert run_ams("device", "expire", looping.device_id, home=home).returncode == 0
        agent_log = tmp_path / "loop.log"
        args = ["--state", str(looping.state), "--setter", f"file:{looping.password_file}", "--interval", "1"]
        with agent_log.open("w") as stderr:
            proc = subprocess.Popen([str(AGENT), "run", *args], stderr=stderr, env=_agent_env())
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "nothing to do" not in agent_log.read_text():
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        loop_log = agent_log.read_text()
        assert "(reason: forced)" in loop_log and "nothing to do" in loop_log, loop_log
        assert loop_log.rstrip().endswith("SIGTERM received: stopped") and "Traceback" not in loop_log
        assert _password(home, looping.device_id)["password"] == looping.password_file.read_text()
        written.add(looping.password_file.read_text())

    log = server.log.read_text()
    for agent in agents:
        assert json.loads(agent.state.read_text())["token"].split(".")[1] not in log
    for password in written:
        assert password not in log
    assert key.split(".")[1] not in log
