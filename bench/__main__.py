"""`make bench`: run the benchmarks, each writing ``bench/results/NAME.json``.

``python -m bench`` runs them all at their default sizes, in about 8 to 10 minutes on
2 cores (measured: 7.8 minutes on an idle machine). The offsite benchmark is about a third
of it (its 1.2 GB archive goes up four times each way and comes down four times each way);
backup takes about two minutes, directory and ldap about one each, the others under half a
minute each. ``python -m bench NAME [NAME...]`` runs only those; ``--quick`` runs each at
a small size (under a minute each: it checks that the benchmark works, its figures mean
little); ``--results DIR`` writes the JSON files elsewhere than bench/results (whose files
docs/performance.md's tables are made from: ``python -m bench.report``).

Each benchmark is a module with ``main(argv) -> int`` that takes ``--quick`` and
``--results DIR`` (bench/results.py) besides its own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# name -> module. Run in this order by `python -m bench`.
BENCHMARKS: dict[str, str] = {
    "startup": "bench.startup_bench",
    "rotation": "bench.rotation_bench",
    "fleet": "bench.fleet_bench",
    "read": "bench.read_bench",
    "expiry": "bench.expiry_bench",
    "backup": "bench.backup_bench",
    "directory": "bench.directory_bench",
    "offsite": "bench.offsite_bench",
    "ldap": "bench.ldap_bench",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="each at a small size (under a minute)")
    parser.add_argument("--results", metavar="DIR", help="write NAME.json here instead of bench/results")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    extra = (["--quick"] if args.quick else []) + (["--results", args.results] if args.results else [])
    failed = []
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            status = importlib.import_module(BENCHMARKS[name]).main(extra)
        except Exception as exc:  # noqa: BLE001 - report and run the others
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
            status = 1
        if status:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - started:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
