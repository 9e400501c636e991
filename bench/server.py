"""A real ``ams serve`` for the benchmarks, and the CPU time of all its processes.

``ams serve`` runs with all its workers (``--workers`` is passed only when ``ams serve
--help`` lists it: the option arrives with the multi-process server). The CPU time is the
time every thread of the server's process and of every process under it ran on a core,
read from /proc in nanoseconds (:class:`CpuMeter`), so work done by worker processes
counts, and time spent waiting for a core does not.
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

__all__ = ["AMS", "CpuMeter", "Server", "free_port", "serve_workers_option"]

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


class CpuMeter:
    """The CPU time (user + system) of a process and every process under it, all their
    threads, in nanoseconds (each thread's ``schedstat``): /proc/PID/stat counts in clock
    ticks (10 ms), a tenth of a 50-agent round of the fleet. A running total: each reading
    adds what every thread ran since the last one (a thread new since then, all it ran), so
    a thread that ends between two readings takes nothing away; what it ran after the last
    reading is not counted (the server's threads live as long as it does)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.total = 0
        self._seen: dict[int, int] = {}
        self.seconds()

    def _threads(self) -> dict[int, int]:
        tree = _children()
        found: dict[int, int] = {}
        todo = [self.pid]
        while todo:
            current = todo.pop()
            todo.extend(tree.get(current, ()))
            try:
                tasks = list(Path(f"/proc/{current}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    found[int(task.name)] = int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return found

    def seconds(self) -> float:
        now = self._threads()
        for tid, ran in now.items():
            self.total += ran - self._seen.get(tid, 0)
        self._seen = now
        return self.total / 1e9


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
        self._meter: CpuMeter | None = None
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
        """The server's CPU seconds so far (:class:`CpuMeter`)."""
        if self._meter is None:
            self._meter = CpuMeter(self.proc.pid)
        return self._meter.seconds()

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
