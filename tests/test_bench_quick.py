"""`python -m bench NAME --quick` runs and writes its results file (issue 12).

Benchmarks are not timed tests: this only checks that one runs end to end at its small size
(a real instance, a real `ams serve`, the real commands) and that what it writes has the
shape docs/performance.md's tables are generated from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURE_KEYS = ["name", "unit", "min", "median", "max", "peer", "ratio", "goal", "met", "note"]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_startup_quick_writes_its_results(tmp_path: Path) -> None:
    done = _bench("startup", "--quick", "--results", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["startup.json"]
    document = json.loads((tmp_path / "startup.json").read_text())
    assert list(document) == ["benchmark", "machine", "sizes", "figures"]
    assert document["benchmark"] == "startup"
    machine = document["machine"]
    for key in ("cpu", "cores", "memory_mb", "python", "sqlite", "openssl", "date"):
        assert machine[key], key
    assert document["sizes"]["quick"] is True
    names = [f["name"] for f in document["figures"]]
    assert names == ["python -c pass", "ams --version", "ams serve to the first answered request"]
    python = document["figures"][0]
    for figure in document["figures"]:
        assert list(figure) == FIGURE_KEYS
        assert figure["unit"] == "ms"
        assert 0 < figure["min"] <= figure["median"] <= figure["max"] < 120_000
        assert (figure["goal"], figure["met"]) == (None, None)
    for figure in document["figures"][1:]:
        assert figure["peer"] == python["median"]
        assert figure["ratio"] == pytest.approx(figure["median"] / python["median"], rel=0.01)
        assert figure["ratio"] > 1  # nothing starts faster than the bare interpreter it runs on


def test_an_unknown_benchmark_is_refused_with_the_names(tmp_path: Path) -> None:
    done = _bench("nosuch", "--results", str(tmp_path))
    assert done.returncode == 2
    assert "no benchmark named nosuch: choose from startup, rotation, fleet" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())
