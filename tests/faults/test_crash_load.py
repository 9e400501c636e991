"""Load: 200 simulated agents rotate over loopback against a real `ams serve` while a
scheduled backup, a manual backup, snapshots and a snapshot restore of another directory run.
Zero failed requests (a 503 with Retry-After counts only when the retry succeeds), zero lost
passwords; the figures are printed and recorded.

Which agent call can a restore answer 503? Check-ins and reports never read a directory
(ams.vault.passwords); registering a device bound to a directory's computer object reads
that object (ams.vault.binding.check_binding), which a restoring directory refuses
(DirectoryUnavailable: 503 with Retry-After, tests/api/test_restoring_retry_after.py). So
while the snapshot restore of the second directory runs, agents register devices bound to
its entries: each 503 is waited out for Retry-After's seconds and sent again, and counts as
handled only when that ends in 201."""

# ruff: noqa: F811 - the fixtures imported from faultfixtures are requested by name below
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crashlib
import figures
import httpx
from faultfixtures import fault_settings, template  # noqa: F401 - fixtures

from conftest import run_ams
from server import Server

AGENTS = 200
ROUNDS = 3
OFFSET = {"AMS_CLOCK_OFFSET_SECONDS": str(60 * 86400)}  # every template password has expired
REGISTRANTS = 4  # agents registering devices into the directory being restored, at once
BOUND = 300  # its entries that the snapshot holds (cn=user00000 .. user00299)


@dataclass
class Registrations:
    done: int = 0  # 201
    answered_503: int = 0  # 503 with Retry-After, each waited out and sent again
    retried_to_success: int = 0  # registrations that had a 503 and then a 201
    failures: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)


def _register_while_restoring(
    url: str, key: str, lab: str, start: threading.Event, stop: threading.Event, out: Registrations
) -> None:
    """From ``start`` (the restore is about to be asked for) until ``stop`` (it ended): agents
    register devices bound to the restored directory's entries, one after another."""
    start.wait(timeout=300)
    lock = threading.Lock()
    todo = iter(range(BOUND))

    def agent() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                with lock:
                    n = next(todo, None)
                if n is None:
                    return
                name = f"user{n:05d}"
                body = {
                    "registration_key": key,
                    "name": name,
                    "scope": lab,
                    "dn": f"cn={name},dc=lab,dc=example,dc=com",
                }
                had_503 = False
                while True:
                    answer = client.post("/api/v1/agent/register", json=body)
                    if answer.status_code == 503 and answer.headers.get("Retry-After"):
                        had_503 = True
                        with lock:
                            out.answered_503 += 1
                        time.sleep(float(answer.headers["Retry-After"]))
                        continue
                    break
                with lock:
                    if answer.status_code == 201:
                        out.done += 1
                        out.retried_to_success += had_503
                        out.devices.append(answer.json()["device_id"])
                    else:
                        out.failures.append(f"register {name}: {answer.status_code} {answer.text[:200]}")
                time.sleep(0.05)  # an agent at a time per worker, spread over the restore

    workers = [threading.Thread(target=agent) for _ in range(REGISTRANTS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)


def test_agents_rotate_while_backups_snapshots_and_a_restore_run(
    template: dict[str, Any], fault_settings: dict[str, int], tmp_path: Path
) -> None:
    home = crashlib.copy_home(template, tmp_path / "home")
    facts = crashlib.relocate(template, home)
    # Devices 100..299 hold version 3 (the first hundred rotated once more in the template).
    agents = [(facts["devices"][n], facts["tokens"][n], 3) for n in range(100, 100 + AGENTS)]
    acked: dict[str, tuple[int, str]] = {}
    side: list[str] = []
    created = run_ams("regkey", "create", "--name", "lab-fleet", "--json", home=home, env=OFFSET)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    restoring, restored = threading.Event(), threading.Event()
    registrations = Registrations()

    def beside() -> None:
        """The other work, through the real `ams` command, while the agents rotate."""
        steps = [
            ("backup", "create", "--json"),
            ("snapshot", "create", facts["lab"]),
            ("snapshot", "restore", facts["snap_lab"], "--wait"),
            ("snapshot", "create", facts["lab"]),
        ]
        for step in steps:
            if step[1] == "restore":
                restoring.set()
            done = run_ams(*step, home=home, env=OFFSET, timeout=120)
            if step[1] == "restore":
                restored.set()
            side.append(
                f"{' '.join(step[:2])}: exit {done.returncode}"
                + (f" {done.stderr[-200:]}" if done.returncode else "")
            )

    started = time.monotonic()
    with Server(home, env=OFFSET) as server:
        worker = threading.Thread(target=beside)
        registrar = threading.Thread(
            target=_register_while_restoring,
            args=(server.url, key, facts["lab"], restoring, restored, registrations),
        )
        registrar.start()
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
        restoring.set()  # (had the side work failed before the restore)
        registrar.join(timeout=300)
        listed = run_ams("backup", "list", "--json", home=home, env=OFFSET)
        shown = run_ams("directory", "show", facts["lab"], "--json", home=home, env=OFFSET)
        keys = run_ams("regkey", "list", "--json", home=home, env=OFFSET)
    seconds = time.monotonic() - started
    lost = crashlib.read_back(home, acked)
    kinds = sorted({b["kind"] for b in json.loads(listed.stdout) if b["status"] == "complete"})
    lab = json.loads(shown.stdout)
    answered_503 = totals.retried_503 + registrations.answered_503
    outcome = (
        f"{totals.rotations} rotations in {seconds:.1f} s, {totals.failed} failed requests, "
        f"{len(lost)} lost passwords; {registrations.done} devices registered into the directory "
        f"being restored, {answered_503} answers 503 with Retry-After, each sent again to success "
        f"({registrations.retried_to_success} registrations waited), {len(registrations.failures)} "
        "failed; beside them: " + "; ".join(side)
    )
    print(f"\nload: {totals.requests} requests: {outcome}")
    figures.record("load", f"{AGENTS} agents x {ROUNDS} rotations with backups, snapshots and a restore",
                   totals.requests, outcome, fault_settings["seed"])  # fmt: skip
    assert totals.failed == 0, totals.failures
    assert not registrations.failures, registrations.failures[:10]
    # The restore's offline stage was met, and every 503 ended in a registration.
    assert registrations.answered_503 >= 1, registrations
    assert registrations.retried_to_success >= 1, registrations
    assert registrations.done == len(registrations.devices) > 0
    # A refused registration used nothing: the key counts exactly the devices answered 201.
    used = {k["name"]: k["used_count"] for k in json.loads(keys.stdout)}
    assert used["lab-fleet"] == registrations.done, (used, registrations.done)
    assert totals.rotations == AGENTS * ROUNDS
    assert not lost, lost[:10]
    assert all(s.endswith("exit 0") for s in side), side
    assert "scheduled" in kinds and "manual" in kinds, kinds
    assert (lab["stage"], lab["entry_count"]) == ("Active", 300), lab
