"""The results format every benchmark writes: ``bench/results/NAME.json``.

One file per benchmark, rewritten by each run::

    {"benchmark": NAME,
     "machine": {"cpu", "cores", "memory_mb", "python", "sqlite", "openssl", "date", ...},
     "sizes": {...what the run was made of: devices, rounds, agents...},
     "figures": [{"name", "unit", "min", "median", "max", "peer", "ratio", "goal", "met", "note"}]}

A figure is one measured quantity over the run's rounds (``min``/``median``/``max`` in
``unit``); ``peer`` is the peer's figure measured in the same run (same unit, or ``null``
when the figure has no peer), ``ratio`` how the two compare (``note`` says which way),
``goal`` the target as text (``"ratio >= 0.7"``, ``"median < 1"``) or ``null``, and ``met``
whether the run reached it (``null`` without a goal). docs/performance.md's result tables
are generated from these files (``python -m bench.report``).
"""

from __future__ import annotations

import json
import operator
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS",
    "Figure",
    "Goal",
    "add_arguments",
    "load",
    "machine",
    "validate",
    "write",
]

RESULTS = Path(__file__).parent / "results"
FIGURE_KEYS = ("name", "unit", "min", "median", "max", "peer", "ratio", "goal", "met", "note")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Goal:
    """A target on one field of a figure: ``Goal("ratio", ">=", 0.7)``."""

    field: str  # "ratio", "median" or "max"
    op: str  # one of >=, >, <=, <
    value: float

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value:g}"

    def met(self, figure: dict[str, Any]) -> bool | None:
        got = figure.get(self.field)
        return None if got is None else _OPS[self.op](float(got), self.value)


@dataclass(frozen=True)
class Figure:
    """One measured quantity: its value in each round, and how it compares with its peer."""

    name: str
    unit: str
    values: Sequence[float]
    peer: float | None = None
    ratio: float | None = None
    goal: Goal | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        if not self.values:
            raise ValueError(f"figure {self.name!r} has no values")
        out: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "min": _round(min(self.values)),
            "median": _round(statistics.median(self.values)),
            "max": _round(max(self.values)),
            "peer": None if self.peer is None else _round(self.peer),
            "ratio": None if self.ratio is None else _round(self.ratio),
            "goal": None if self.goal is None else str(self.goal),
            "met": None,
            "note": self.note,
        }
        if self.goal is not None:
            out["met"] = self.goal.met(out)
        return out


def _round(value: float) -> float:
    """Four significant digits: the machines' noise is far larger."""
    return float(f"{value:.4g}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _openssl() -> str:
    """The OpenSSL that does AMS's RSA and AES: the one ``cryptography`` is built with."""
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """Facts of the machine and the software the run measured."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "openssl": _openssl(),
        "load_average": round(os.getloadavg()[0], 2),
        "commit": _commit(),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }


def add_arguments(parser: Any) -> None:
    """``--quick`` and ``--results DIR``, the options every benchmark takes."""
    parser.add_argument(
        "--quick", action="store_true", help="a small size, under a minute: checks that it runs"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for NAME.json (default bench/results, the files docs/performance.md is made from)",
    )


def write(name: str, sizes: dict[str, Any], figures: Sequence[Figure], folder: Path = RESULTS) -> Path:
    """Write ``folder/NAME.json`` and print its figures; the path."""
    rows = [f.to_dict() for f in figures]
    document: dict[str, Any] = {"benchmark": name, "machine": machine(), "sizes": sizes, "figures": rows}
    validate(document)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    for f in rows:
        peer = "" if f["peer"] is None else f"  peer {f['peer']}"
        ratio = "" if f["ratio"] is None else f"  ratio {f['ratio']}"
        goal = "" if f["goal"] is None else f"  goal {f['goal']}: {'met' if f['met'] else 'NOT met'}"
        print(f"  {f['name']:<48} {f['median']} {f['unit']} ({f['min']}-{f['max']}){peer}{ratio}{goal}")
    print(f"results: {path}", flush=True)
    return path


def validate(document: Any) -> None:
    """Raise ValueError unless ``document`` has the shape above."""
    if not isinstance(document, dict):
        raise ValueError("a results file holds one JSON object")
    if set(document) != {"benchmark", "machine", "sizes", "figures"}:
        raise ValueError(f"keys {sorted(document)}: expected benchmark, machine, sizes, figures")
    if not isinstance(document["benchmark"], str) or not document["benchmark"]:
        raise ValueError("benchmark: a name")
    for key in ("cpu", "cores", "memory_mb", "python", "sqlite", "openssl", "date"):
        if key not in document["machine"]:
            raise ValueError(f"machine: {key} is missing")
    if not isinstance(document["sizes"], dict):
        raise ValueError("sizes: an object")
    if not isinstance(document["figures"], list) or not document["figures"]:
        raise ValueError("figures: a non-empty list")
    for f in document["figures"]:
        if not isinstance(f, dict) or tuple(f) != FIGURE_KEYS:
            raise ValueError(f"a figure has the keys {', '.join(FIGURE_KEYS)}, in that order: {f}")
        for key in ("min", "median", "max"):
            if not isinstance(f[key], int | float):
                raise ValueError(f"figure {f['name']!r}: {key} is not a number")
        if not f["min"] <= f["median"] <= f["max"]:
            raise ValueError(f"figure {f['name']!r}: not min <= median <= max")
        for key in ("peer", "ratio"):
            if f[key] is not None and not isinstance(f[key], int | float):
                raise ValueError(f"figure {f['name']!r}: {key} is neither a number nor null")
        if (f["goal"] is None) != (f["met"] is None) and f["goal"] is None:
            raise ValueError(f"figure {f['name']!r}: met without a goal")


def load(path: Path) -> dict[str, Any]:
    """One results file, validated."""
    document = json.loads(path.read_text())
    validate(document)
    return dict(document)


if __name__ == "__main__":  # pragma: no cover - a manual check of the files
    for p in sorted(RESULTS.glob("*.json")):
        load(p)
        print(f"{p.name}: ok")
    sys.exit(0)
