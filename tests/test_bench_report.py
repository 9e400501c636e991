"""docs/performance.md's result tables are generated from bench/results/*.json (issue 12)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "bench" / "results"
SECTION = re.compile(r"<!-- bench:([a-z0-9_-]+) begin[^\n]*-->\n.*?<!-- bench:\1 end -->", re.DOTALL)


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.report", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_tables_of_docs_performance_agree_with_the_committed_results() -> None:
    done = _report("--check")
    assert done.returncode == 0, done.stderr
    names = SECTION.findall(DOC.read_text())
    assert sorted(names) == sorted(p.stem for p in RESULTS.glob("*.json"))
    assert {"fleet", "read", "expiry", "startup", "rotation", "backup", "directory"} <= set(names)


def test_a_changed_result_is_found_and_only_its_table_is_rewritten(tmp_path: Path) -> None:
    results, doc = tmp_path / "results", tmp_path / "performance.md"
    shutil.copytree(RESULTS, results)
    shutil.copy(DOC, doc)
    path = results / "read.json"
    document = json.loads(path.read_text())
    figure = document["figures"][-1]
    figure["max"] = figure["median"] = 987654.0
    path.write_text(json.dumps(document))
    args = ("--doc", str(doc), "--results", str(results))

    done = _report("--check", *args)
    assert done.returncode == 1
    assert "is out of date" in done.stderr and "run `python -m bench.report`" in done.stderr
    assert doc.read_text() == DOC.read_text()

    assert _report(*args).returncode == 0
    new = doc.read_text()
    assert "987,654 ms" in new
    assert SECTION.sub("", new) == SECTION.sub("", DOC.read_text())  # the prose is untouched
    assert _report("--check", *args).returncode == 0


def test_a_section_without_results_and_results_without_a_section_are_reported(tmp_path: Path) -> None:
    results, doc = tmp_path / "results", tmp_path / "performance.md"
    results.mkdir()
    shutil.copy(RESULTS / "startup.json", results / "startup.json")
    doc.write_text("# P\n\n<!-- bench:nosuch begin -->\nold\n<!-- bench:nosuch end -->\n")

    done = _report("--check", "--doc", str(doc), "--results", str(results))
    assert done.returncode == 1
    assert "section bench:nosuch has no results file nosuch.json" in done.stderr
    assert "startup.json has no section in the document" in done.stderr
    assert "Traceback" not in done.stderr
