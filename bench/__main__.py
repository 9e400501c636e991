"""`make bench`: run every ``bench/*_bench.py`` module's ``main()``, in name order.

``python -m bench`` runs them all; ``python -m bench directory`` only those whose name
contains ``directory``. Each module reads its own parameters (see its docstring); this
runner passes none, so a module runs with its defaults or its environment variables.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("*_bench.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    failed = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        saved = sys.argv
        sys.argv = [f"bench.{name}"]
        try:
            status = module.main()
        except Exception as exc:  # noqa: BLE001 - report and run the others
            print(f"!! bench.{name} failed: {type(exc).__name__}: {exc}", flush=True)
            status = 1
        finally:
            sys.argv = saved
        if status:
            failed.append(name)
        print(f"== bench.{name}: {time.perf_counter() - started:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
