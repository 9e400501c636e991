"""Cold start of ``ams serve`` and of a trivial CLI command, against ``python -c pass`` (issue 12).

Timed from the process's start (``Popen``) to its end for ``ams --version`` and ``python -c
pass`` (the same interpreter, with the same site-packages), and to the first answered
``GET /healthz`` for ``ams serve`` (with all its workers, on a new instance with its
RSA-4096 certificate; polled every 5 ms over a new connection each time). The rounds are
interleaved (the order rotating), after one untimed round that warms the page cache. There
is no goal: the figures are recorded, each as a ratio to ``python -c pass``.

Options: ``--rounds N`` (default 7; ``--quick``: 2), and ``--quick`` / ``--results DIR``
(bench/results.py). Run: ``python -m bench startup``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ams.home import Home
from ams.instance import create_instance, open_instance
from ams.vault import certificates
from bench import results, simulated
from bench.server import AMS, Server, bench_env

NAME = "startup"


def _run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=bench_env())
    return time.perf_counter() - started


def _serve(home: Path, log: Path) -> float:
    server = Server(home, log, poll=0.005)
    try:
        return server.start_seconds
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench startup", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick: 2)")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rounds = args.rounds or (2 if args.quick else 7)
    root = Path(tempfile.mkdtemp(prefix="ams-startup-bench-"))
    try:
        home = Home(root / "home")
        create_instance(home, recovery_password=simulated.RECOVERY, actor="bench")
        instance = open_instance(home)
        try:
            certificates.ensure_active(instance, "agent", "bench")
        finally:
            instance.close()
        log = root / "serve.log"
        sides: dict[str, Callable[[], float]] = {
            "python": lambda: _run([sys.executable, "-c", "pass"]),
            "version": lambda: _run([str(AMS), "--version"]),
            "serve": lambda: _serve(home.root, log),
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        order = list(sides)
        for side in order:  # untimed: the page cache holds the interpreter and the packages
            sides[side]()
        for i in range(rounds):
            for side in order[i % 3 :] + order[: i % 3]:
                times[side].append(sides[side]())
        peer = statistics.median(times["python"])
        ms = {k: [t * 1000 for t in v] for k, v in times.items()}
        figures = [
            results.Figure(
                "python -c pass",
                "ms",
                ms["python"],
                note="the interpreter alone: the peer of the others",
            ),
            results.Figure(
                "ams --version",
                "ms",
                ms["version"],
                peer=peer * 1000,
                ratio=statistics.median(times["version"]) / peer,
                note="ratio: ams --version / python -c pass (medians)",
            ),
            results.Figure(
                "ams serve to the first answered request",
                "ms",
                ms["serve"],
                peer=peer * 1000,
                ratio=statistics.median(times["serve"]) / peer,
                note="ratio: ams serve / python -c pass (medians); all workers",
            ),
        ]
        from bench.server import serve_workers_option

        sizes = {
            "rounds": rounds,
            "quick": args.quick,
            "workers": "default (cores)" if serve_workers_option() else "one process",
        }
        results.write(NAME, sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
