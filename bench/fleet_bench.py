"""Fleet rotation throughput: concurrent agents against ``ams serve``, against RSA (issue 12).

On an instance of 100,000 devices (bench/simulated.py builds it with bulk INSERTs), a real
``ams serve`` with all its workers, and 50, then 200, simulated agents (asyncio over
loopback, one keep-alive connection each, real device tokens): in each round every agent
checks in, is told to rotate (its device was marked, untimed), and reports its next password
with a real RSA-4096 blob encrypted ahead, untimed. Measured per round, beside the peer on
the same blobs in the same round:

- rotations per server CPU-second (user + system time of all the server's processes, from
  /proc in nanoseconds: the agents share the cores, so wall time alone would measure them
  too) against RSA-4096 decryptions per CPU-second (``decrypt_password``, one core; the mean
  of a measurement before and one after the round). Goal: >= 0.70;
- rotations per second of wall time against decryptions per second on all cores;
- the p99 latency of a report (the POST, which test-decrypts) under that load.

Options: ``--devices N`` (default 100000; ``--quick``: 2000), ``--agents A,B`` (default
50,200; quick: 50), ``--rounds N`` (default 5; quick: 2), ``--quick``, ``--results DIR``,
``--profile DIR`` (py-spy of the server's processes during the timed rounds:
bench/spy.py). Run: ``python -m bench fleet``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import results, simulated
from bench.server import Server
from bench.spy import profiled

NAME = "fleet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench fleet", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--devices", type=int, help="devices in the instance (default 100000; quick 2000)")
    parser.add_argument("--agents", help="concurrent agents, comma-separated (default 50,200; quick 50)")
    parser.add_argument("--rounds", type=int, help="rounds per agent count (default 5; quick 2)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the server (bench/spy.py)")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    devices = args.devices or (2000 if args.quick else 100_000)
    agent_counts = [int(a) for a in (args.agents or ("50" if args.quick else "50,200")).split(",")]
    rounds = args.rounds or (2 if args.quick else 5)
    if min(agent_counts) < 2 or max(agent_counts) > devices:
        parser.error("--agents: each count from 2 to the number of devices")
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="ams-fleet-bench-"))
    try:
        fleet = simulated.build(root, devices, max(agent_counts))
        print(f"instance of {devices:,} devices in {fleet.build_seconds:.1f} s", flush=True)
        peer = simulated.Peer(fleet.private_key_der(), cores)
        try:
            with Server(fleet.home.root, root / "serve.log") as server:
                # Untimed: one rotation of every agent warms the server's processes.
                simulated.measure_round(fleet, server.cpu_seconds, server.url, peer, fleet.agents, force=True)
                figures: list[results.Figure] = []
                retried = 0
                for count in agent_counts:
                    with (
                        profiled(server.proc.pid, args.profile / f"fleet-{count}.txt")
                        if args.profile
                        else contextlib.nullcontext()
                    ):
                        measured = [
                            simulated.measure_round(
                                fleet, server.cpu_seconds, server.url, peer, fleet.agents[:count], force=True
                            )
                            for _ in range(rounds)
                        ]
                    figures += simulated.throughput_figures(f"{count} agents", measured, cores)
                    retried += sum(r.retried for r in measured)
                workers = server.workers
        finally:
            peer.close()
            fleet.instance.close()
        sizes = {
            "devices": devices,
            "agents": agent_counts,
            "rounds": rounds,
            "server_workers": workers or 1,
            "requests_sent_again": retried,
            "quick": args.quick,
        }
        results.write(NAME, sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
