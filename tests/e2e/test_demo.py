"""`make run` (scripts/demo) on another port and folder, as the README's Quick start says."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_serves_on_the_port_and_folder_it_is_given(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "ams").exists():
        pytest.skip("scripts/demo runs .venv/bin/ams: create it with `make .venv/.installed`")
    demo_home = tmp_path / "demo"
    default_existed = (ROOT / ".ams-demo").exists()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
    env |= {"AMS_DEMO_HOME": str(demo_home), "AMS_DEMO_PORT": str(port), "AMS_DEMO_HOST": "127.0.0.1"}
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(ROOT / "scripts" / "demo")], cwd=tmp_path, stdout=out, stderr=out, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        token_file = demo_home / "demo-admin.token"
        assert token_file.stat().st_mode & 0o077 == 0
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", headers=headers, timeout=10)
        assert status.status_code == 200
        assert status.json()["home"] == str(demo_home)
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # the script exec'd `ams serve`
        assert proc.wait(timeout=30) == 0
    printed = log.read_text()
    assert f"http://127.0.0.1:{port}" in printed
    assert f"Start afresh with: rm -rf {demo_home}" in printed
    assert (ROOT / ".ams-demo").exists() == default_existed  # the default folder was not used
