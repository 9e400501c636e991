"""`ams serve --workers N` spreads kept-alive connections over its workers (issue 12).

With one listening socket shared by the workers, asyncio accepted up to 100 waiting
connections each time a worker woke, so a burst of agents connecting at once went mostly
to one worker (measured: 5 of 50, 2 of 50, 8 of 50 to the other), which then served them
alone while the other idled. Each worker now listens on its own socket (SO_REUSEPORT) and
the kernel spreads the connections.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest

from ams.cli.serve_cmd import _listen_each
from ams.errors import BadInput
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

CONNECTIONS = 60


async def _worker_of_one_connection(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        await reader.readexactly(int(fields[b"content-length"]))
        return fields[b"x-ams-worker"]
    finally:
        writer.close()


async def _workers_of_a_burst(port: int) -> Counter[bytes]:
    return Counter(await asyncio.gather(*(_worker_of_one_connection(port) for _ in range(CONNECTIONS))))


def test_a_burst_of_connections_is_spread_over_the_workers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    with Server(home, workers=2) as server:
        workers = asyncio.run(_workers_of_a_burst(server.port))
    assert len(workers) == 2, workers
    # Evenly spread, each worker gets 30 +- 4 (a 30% floor fails once in a thousand runs).
    assert min(workers.values()) >= CONNECTIONS * 3 // 10, workers


def test_a_port_another_program_holds_is_refused_not_shared() -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(BadInput, match="already in use"):
            _listen_each("127.0.0.1", other.getsockname()[1], 2)
    finally:
        other.close()
    sockets = _listen_each("127.0.0.1", 0, 2)
    try:
        assert len({s.getsockname() for s in sockets}) == 1
        with pytest.raises(BadInput, match="already in use"):  # a second service on it
            _listen_each("127.0.0.1", sockets[0].getsockname()[1], 2)
    finally:
        for sock in sockets:
            sock.close()
