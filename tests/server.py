"""A real `ams serve` process for end-to-end tests, on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import AMS, run_ams

AGENT = Path(sys.executable).parent / "ams-agent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self,
        home: Path,
        env: dict[str, str] | None = None,
        *,
        args: list[str] | None = None,
        workers: int | None = None,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"serve-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
        full_env.update(env or {})
        self._log_handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        extra = ["--workers", str(workers)] if workers is not None else []
        self.proc = subprocess.Popen(
            [str(AMS), "serve", "--home", str(home), "--port", str(self.port), *extra, *(args or [])],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ams serve exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("ams serve did not answer /healthz in time")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_handle.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FileAgent:
    """A real ams-agent for one device, with the file backend (the password lands in a file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "state" / "state.json"
        self.password_file = folder / "password"

    def _run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
        return subprocess.run(
            [str(AGENT), *args, "--state", str(self.state)],
            input=input, capture_output=True, text=True, env=env, timeout=90,
        )  # fmt: skip

    def register(self, server: Server, name: str) -> str:
        """Register with a new registration key; the device id."""
        made = run_ams("regkey", "create", "--name", f"for-{name}", "--json", home=server.home)
        key = json.loads(made.stdout)["key"]
        done = self._run("register", "--server", server.url, "--name", name, "--registration-key-stdin",
                         input=key + "\n")  # fmt: skip
        assert done.returncode == 0, done.stderr
        return str(json.loads(self.state.read_text())["device_id"])

    def run_once(self) -> subprocess.CompletedProcess[str]:
        return self._run("run", "--once", "--setter", f"file:{self.password_file}", "--max-delay", "1")

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()


def console_home(home: Path, users: dict[str, tuple[str, str]]) -> Path:
    """A new instance at ``home`` with console users: name -> (role, password)."""
    made = run_ams("init", "--generate-recovery-password", home=home)
    assert made.returncode == 0, made.stderr
    for name, (role, password) in users.items():
        made = run_ams(
            "user", "create", name, "--role", role, "--password-stdin", home=home, input=password + "\n"
        )
        assert made.returncode == 0, made.stderr
    return home
