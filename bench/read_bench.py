"""An administrator's password read at 100,000 devices, against one RSA-4096 decryption (issue 12).

On an instance of 100,000 devices, each with a current password encrypted to the active
RSA-4096 certificate (bench/simulated.py), one administrator (an admin API key) reads the
passwords of devices picked at random, one request at a time over a kept-alive connection,
from a real ``ams serve``: ``GET /api/v1/devices/{id}/password`` decrypts the blob and
audits the read. The peer, measured in each round on the blobs the devices hold: one
``decrypt_password`` call (the server's own code for it, the loaded key kept), wall time.
Goal: the read's p99 at most 3x the decryption's median.

Options: ``--devices N`` (default 100000; ``--quick``: 2000), ``--reads N`` per round
(default 200; quick 40), ``--rounds N`` (default 5; quick 2), ``--quick``, ``--results DIR``,
``--profile DIR`` (py-spy of the server during the timed rounds: bench/spy.py).
Run: ``python -m bench read``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from sqlalchemy import select

from ams.crypto.blob import decrypt_password
from ams.db.models.vault import DevicePassword
from bench import results, simulated
from bench.server import Server
from bench.spy import profiled

NAME = "read"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench read", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, help="devices in the instance (default 100000; quick 2000)")
    parser.add_argument("--reads", type=int, help="reads per round (default 200; quick 40)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the server (bench/spy.py)")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    devices = args.devices or (2000 if args.quick else 100_000)
    reads = args.reads or (40 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 5)
    if reads < 2:
        parser.error("--reads: 2 or more")
    picker = random.Random(12)  # noqa: S311 - which devices to read, not a secret
    root = Path(tempfile.mkdtemp(prefix="ams-read-bench-"))
    try:
        fleet = simulated.build(root, devices, 0)
        print(f"instance of {devices:,} devices in {fleet.build_seconds:.1f} s", flush=True)
        key = fleet.private_key_der()
        p50s: list[float] = []
        p99s: list[float] = []
        peers: list[float] = []
        peers_cpu: list[float] = []
        server_cpu: list[float] = []
        stack = contextlib.ExitStack()
        try:
            with (
                stack,
                Server(fleet.home.root, root / "serve.log") as server,
            ):
                # The standard library's client on one kept-alive connection: a thin client, so
                # the latency is the server's (httpx's own Python added ~0.5 ms to each read).
                url = urllib.parse.urlsplit(server.url)
                client = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
                stack.callback(client.close)
                headers = {"Authorization": f"Bearer {fleet.admin_token}"}

                def read(device_id: str) -> float:
                    started = time.perf_counter()
                    client.request("GET", f"/api/v1/devices/{device_id}/password", headers=headers)
                    got = client.getresponse()
                    body = got.read()
                    elapsed = time.perf_counter() - started
                    if got.status != 200 or not json.loads(body)["recoverable"]:
                        raise RuntimeError(f"read {device_id}: {got.status} {body[:300]!r}")
                    return elapsed

                for device_id in picker.sample(fleet.device_ids, min(20, devices)):  # untimed: warm
                    read(device_id)
                profiling = (
                    profiled(server.proc.pid, args.profile / "read.txt")
                    if args.profile
                    else contextlib.nullcontext()
                )
                stack.enter_context(profiling)
                for round_no in range(rounds):
                    picked = picker.sample(fleet.device_ids, reads)
                    with fleet.instance.session() as session:
                        blobs = list(
                            session.scalars(
                                select(DevicePassword.blob).where(
                                    DevicePassword.device_id.in_(picked), DevicePassword.is_current.is_(True)
                                )
                            )
                        )
                    decrypt_password(blobs[0], key)

                    def peer(blobs: list[bytes] = blobs) -> None:
                        times = []
                        cpu = time.thread_time()
                        for raw in blobs:
                            started = time.perf_counter()
                            decrypt_password(raw, key)
                            times.append(time.perf_counter() - started)
                        peers_cpu.append((time.thread_time() - cpu) / len(blobs) * 1000)
                        peers.append(statistics.median(times) * 1000)

                    def ams(picked: list[str] = picked) -> None:
                        cpu = server.cpu_seconds()
                        times = [read(d) * 1000 for d in picked]
                        server_cpu.append((server.cpu_seconds() - cpu) / len(picked) * 1000)
                        p50s.append(statistics.median(times))
                        p99s.append(simulated.p99(times))

                    for side in (peer, ams) if round_no % 2 == 0 else (ams, peer):
                        side()
                workers = server.workers
                stack.close()
        finally:
            fleet.instance.close()
        decryption = statistics.median(peers)
        figures = [
            results.Figure(
                "one RSA-4096 decryption (decrypt_password)",
                "ms",
                peers,
                note="the peer: median wall time of one call, key loaded, per round",
            ),
            results.Figure(
                "password read p50 (REST, admin)",
                "ms",
                p50s,
                peer=decryption,
                ratio=statistics.median(p50s) / decryption,
                note="ratio: the read's p50 / one decryption",
            ),
            results.Figure(
                "password read p99 (REST, admin)",
                "ms",
                p99s,
                peer=decryption,
                ratio=statistics.median(p99s) / decryption,
                goal=results.Goal("ratio", "<=", 3),
                note="ratio: the read's p99 (median of the rounds) / one decryption",
            ),
            results.Figure(
                "server CPU per read",
                "ms",
                server_cpu,
                peer=statistics.median(peers_cpu),
                ratio=statistics.median(server_cpu) / statistics.median(peers_cpu),
                note="all the server's processes, from /proc; peer: one decryption's CPU time."
                " Unlike the latencies, not lengthened by a busy machine's queue for the cores",
            ),
        ]
        sizes = {
            "devices": devices,
            "reads_per_round": reads,
            "rounds": rounds,
            "server_workers": workers or 1,
            "quick": args.quick,
        }
        results.write(NAME, sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
