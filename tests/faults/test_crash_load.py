"""Load: 200 simulated agents rotate over loopback against a real `ams serve` while a
scheduled backup, a manual backup, snapshots and a snapshot restore of another directory run.
Zero failed requests (a 503 with Retry-After counts only when the retry succeeds), zero lost
passwords; the figures are printed and recorded."""

# ruff: noqa: F811 - the fixtures imported from faultfixtures are requested by name below
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import crashlib
import figures
from faultfixtures import fault_settings, template  # noqa: F401 - fixtures

from conftest import run_ams
from server import Server

AGENTS = 200
ROUNDS = 3
OFFSET = {"AMS_CLOCK_OFFSET_SECONDS": str(60 * 86400)}  # every template password has expired


def test_agents_rotate_while_backups_snapshots_and_a_restore_run(
    template: dict[str, Any], fault_settings: dict[str, int], tmp_path: Path
) -> None:
    home = crashlib.copy_home(template, tmp_path / "home")
    facts = crashlib.relocate(template, home)
    # Devices 100..299 hold version 3 (the first hundred rotated once more in the template).
    agents = [(facts["devices"][n], facts["tokens"][n], 3) for n in range(100, 100 + AGENTS)]
    acked: dict[str, tuple[int, str]] = {}
    side: list[str] = []

    def beside() -> None:
        """The other work, through the real `ams` command, while the agents rotate."""
        steps = [
            ("backup", "create", "--json"),
            ("snapshot", "create", facts["lab"]),
            ("snapshot", "restore", facts["snap_lab"], "--wait"),
            ("snapshot", "create", facts["lab"]),
        ]
        for step in steps:
            done = run_ams(*step, home=home, env=OFFSET, timeout=120)
            side.append(
                f"{' '.join(step[:2])}: exit {done.returncode}"
                + (f" {done.stderr[-200:]}" if done.returncode else "")
            )

    started = time.monotonic()
    with Server(home, env=OFFSET) as server:
        worker = threading.Thread(target=beside)
        worker.start()
        totals = crashlib.SwarmFigures()
        for round_ in range(ROUNDS):
            if round_:
                expired = run_ams("device", "expire", "--scope", "agent", home=home, env=OFFSET)
                assert expired.returncode == 0, expired.stderr
            got = crashlib.swarm(server.url, agents, rotations=1, concurrency=AGENTS, acked=acked)
            totals.requests += got.requests
            totals.rotations += got.rotations
            totals.failed += got.failed
            totals.retried_503 += got.retried_503
            totals.failures = (totals.failures or []) + (got.failures or [])
        worker.join(timeout=300)
        listed = run_ams("backup", "list", "--json", home=home, env=OFFSET)
        shown = run_ams("directory", "show", facts["lab"], "--json", home=home, env=OFFSET)
    seconds = time.monotonic() - started
    lost = crashlib.read_back(home, acked)
    kinds = sorted({b["kind"] for b in json.loads(listed.stdout) if b["status"] == "complete"})
    lab = json.loads(shown.stdout)
    outcome = (
        f"{totals.rotations} rotations in {seconds:.1f} s, {totals.failed} failed requests, "
        f"{totals.retried_503} answers 503 retried to success, {len(lost)} lost passwords; beside them: "
        + "; ".join(side)
    )
    print(f"\nload: {totals.requests} requests: {outcome}")
    figures.record("load", f"{AGENTS} agents x {ROUNDS} rotations with backups, snapshots and a restore",
                   totals.requests, outcome, fault_settings["seed"])  # fmt: skip
    assert totals.failed == 0, totals.failures
    assert totals.rotations == AGENTS * ROUNDS
    assert not lost, lost[:10]
    assert all(s.endswith("exit 0") for s in side), side
    assert "scheduled" in kinds and "manual" in kinds, kinds
    assert (lab["stage"], lab["entry_count"]) == ("Active", 300), lab
