"""A real ``ams serve`` for the benchmarks, and the CPU time of all its processes.

``ams serve`` runs with all its workers (``--workers`` is passed only when ``ams serve
--help`` lists it: the option arrives with the multi-process server). The CPU time is the
user + system time of the server's process and every process under it, read from /proc,
so work done by worker processes counts, and time spent waiting for a core does not.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["AMS", "Server", "free_port", "serve_workers_option", "tree_cpu_seconds"]

AMS = Path(sys.executable).parent / "ams"


def bench_env() -> dict[str, str]:
    """The environment without AMS_* settings, so the instance's own ams.toml decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}


@functools.cache
def serve_workers_option() -> bool:
    """Whether this ``ams serve`` takes ``--workers N``."""
    out = subprocess.run(
        [str(AMS), "serve", "--help"], capture_output=True, text=True, env=bench_env(), timeout=60
    )
    return "--workers" in out.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system seconds of ``pid`` and every live process under it (all their threads)."""
    tree = _children()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += _cpu(current)
        todo.extend(tree.get(current, ()))
    return total


def answered(port: int, path: str = "/healthz", timeout: float = 1.0) -> bool:
    """Whether the server on ``port`` answers ``GET path`` with 200 now."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Server:
    """``ams serve`` on a free loopback port, started and answering /healthz on return."""

    def __init__(self, home: Path, log: Path, *, workers: int | None = None, poll: float = 0.1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(AMS), "serve", "--home", str(home), "--host", "127.0.0.1", "--port", str(self.port)]
        self.workers: int | None = None
        if serve_workers_option():
            self.workers = workers or os.cpu_count() or 1
            argv += ["--workers", str(self.workers)]
        self.log = log
        self._log = log.open("w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=bench_env())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"ams serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            if answered(self.port):
                self.ready = time.perf_counter()
                return
            time.sleep(poll)
        self.stop()
        raise RuntimeError("ams serve did not answer /healthz within 120 s")

    @property
    def start_seconds(self) -> float:
        """From the process's start to the first answered request."""
        return self.ready - self.started

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
