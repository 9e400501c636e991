"""End to end: a real `ams-agent` against a real `ams serve` at the edges of the version range.

Before issue 18 (item 5) was fixed, a device whose versions reached 2**31 - 1 was told to
report 2**31, which the server refused, so `ams-agent run` failed at every check-in; an agent
whose state file held an absurd version was told to report one above it, refused the same way.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

AGENT = Path(sys.executable).parent / "ams-agent"
OLD_TOP = 2**31 - 1


class Agent:
    def __init__(self, folder: Path) -> None:
        self.state = folder / "state" / "state.json"
        self.password_file = folder / "password"

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
        return subprocess.run(
            [str(AGENT), *args, "--state", str(self.state)],
            input=input, capture_output=True, text=True, env=env, timeout=90,
        )  # fmt: skip

    def register(self, url: str, key: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "register", "--server", url, "--registration-key-stdin", "--name", "edge-01", input=key + "\n"
        )

    def run_once(self) -> subprocess.CompletedProcess[str]:
        return self.run(
            "run", "--once", "--setter", f"file:{self.password_file}", "--tries", "3", "--max-delay", "1"
        )

    @property
    def device_id(self) -> str:
        return str(json.loads(self.state.read_text())["device_id"])


def _rotated(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 0, result.stderr
    assert f"(reason: {reason})" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _set_state_version(agent: Agent, version: int) -> None:
    state = json.loads(agent.state.read_text())
    state["last_version"] = version
    agent.state.write_text(json.dumps(state))


def test_an_agent_at_the_edges_of_the_version_range_keeps_rotating(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    created = run_ams("regkey", "create", "--name", "edge", "--json", home=home)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    agent = Agent(tmp_path / "agent")

    with Server(home) as server:
        registered = agent.register(server.url, key)
        assert registered.returncode == 0, registered.stderr
        _rotated(agent.run_once(), "new")
        device_id = agent.device_id

        # A damaged state file with a version the server cannot have issued: one rotation repairs it.
        _set_state_version(agent, 10**30)
        _rotated(agent.run_once(), "rollback")
        assert json.loads(agent.state.read_text())["last_version"] == 2

        # The device's versions at 2**31 - 1, as the old server accepted: it rotates past them.
        with sqlite3.connect(home / "data" / "ams.db") as db:
            db.execute(
                "UPDATE device_passwords SET version = ? WHERE device_id = ? AND is_current",
                (OLD_TOP, device_id),
            )
            db.execute(
                "UPDATE devices SET current_version = ?, force_rotation = 1 WHERE id = ?",
                (OLD_TOP, device_id),
            )
        db.close()
        _set_state_version(agent, OLD_TOP)
        _rotated(agent.run_once(), "forced")
        assert json.loads(agent.state.read_text())["last_version"] == OLD_TOP + 1
        stored = run_ams("password", "get", device_id, "--json", home=home)
        assert stored.returncode == 0, stored.stderr
        current = json.loads(stored.stdout)
        assert (current["version"], current["password"]) == (OLD_TOP + 1, agent.password_file.read_text())
