"""Lost-key recovery at scale: a certificate marked lost on 100,000 devices (issue 12).

On an instance of 100,000 devices, each with a current password encrypted to the active
RSA-4096 certificate (bench/simulated.py), with a real ``ams serve`` running: the service
call ``certificates.lost`` (what ``ams certs lost`` and the REST call run) drops the key,
generates and publishes a new RSA-4096 certificate, and expires every current password under
the lost one, so every device rotates at its next check-in. Goal: under 1 s. RSA-4096 key
generation takes a random 0.3 to several seconds whatever the instance's size, so it is timed
apart and the goal applies to the rest; the total is recorded beside it. The peer: the bare
``UPDATE`` of the same rows with sqlite3, in a transaction rolled back.

Then the fleet's re-rotation: the simulated agents check in (told to rotate: ``expired``) and
report passwords encrypted to the new certificate (made after the lost, untimed), measured as
in the ``fleet`` benchmark (rotations per server CPU-second against decryptions per
CPU-second, goal >= 0.70; wall-clock rates; report p99). Between rounds every current
password is put back under the new active certificate and unexpired (untimed), so each round
marks all N devices again.

Options: ``--devices N`` (default 100000; ``--quick``: 2000), ``--agents N`` (default 200;
quick 50), ``--rounds N`` (default 3; quick 1), ``--quick``, ``--results DIR``.
Run: ``python -m bench expiry``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, update

from ams.db.models.vault import DevicePassword
from ams.instance import Instance
from ams.vault import certificates
from bench import results, simulated
from bench.server import Server

NAME = "expiry"


@contextlib.contextmanager
def timing(owner: Any, name: str, into: dict[str, float]) -> Iterator[None]:
    """Add the wall time spent in ``owner.name`` to ``into[name]`` while inside."""
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into[name] += time.perf_counter() - started

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


_EXPIRING = "UPDATE device_passwords"


@contextlib.contextmanager
def statement_time(instance: Instance, prefix: str, into: dict[str, float]) -> Iterator[None]:
    """Add the time spent executing statements that start with ``prefix`` to ``into[prefix]``."""

    def before(conn: Any, *_args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        started = conn.info.pop("bench_started", None)
        if started is not None and statement.lstrip().startswith(prefix):
            into[prefix] += time.perf_counter() - started

    event.listen(instance.engine, "before_cursor_execute", before)
    event.listen(instance.engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(instance.engine, "before_cursor_execute", before)
        event.remove(instance.engine, "after_cursor_execute", after)


def bare_update(database: Path, thumbprint: str) -> float:
    """Seconds of the one UPDATE that expires the same rows, with sqlite3, rolled back."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        (now,) = conn.execute("SELECT max(effective_at) FROM device_passwords").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        conn.execute(
            "UPDATE device_passwords SET expires_at = ? WHERE is_current = 1"
            " AND certificate_thumbprint = ? AND expires_at > ?",
            (now, thumbprint, now),
        )
        elapsed = time.perf_counter() - started
        conn.execute("ROLLBACK")
        return elapsed
    finally:
        conn.close()


def reset(fleet: simulated.Fleet) -> None:
    """Untimed: every current password under the active certificate again, and unexpired."""
    fleet.refresh_certificate()
    instance = fleet.instance
    with instance.transaction() as session:
        session.execute(
            update(DevicePassword)
            .where(DevicePassword.is_current.is_(True))
            .values(
                certificate_thumbprint=fleet.certificate.thumbprint,
                expires_at=instance.clock.now() + timedelta(days=30),
            )
            .execution_options(synchronize_session=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench expiry", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--devices", type=int, help="devices in the instance (default 100000; quick 2000)")
    parser.add_argument(
        "--agents", type=int, help="agents that rotate after each loss (default 200; quick 50)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    devices = args.devices or (2000 if args.quick else 100_000)
    agents = args.agents or (50 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    if not 2 <= agents <= devices:
        parser.error("--agents: from 2 to the number of devices")
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="ams-expiry-bench-"))
    try:
        fleet = simulated.build(root, devices, agents)
        print(f"instance of {devices:,} devices in {fleet.build_seconds:.1f} s", flush=True)
        instance = fleet.instance
        peer = simulated.Peer(fleet.private_key_der(), cores)
        totals: list[float] = []
        without_keygen: list[float] = []
        inside: dict[str, list[float]] = defaultdict(list)
        bare: list[float] = []
        expired: list[int] = []
        measured: list[simulated.RoundResult] = []
        try:
            with Server(fleet.home.root, root / "serve.log") as server:
                for round_no in range(rounds):
                    if round_no:
                        reset(fleet)
                    thumbprint = fleet.certificate.thumbprint
                    bare.append(bare_update(fleet.home.sqlite_path, thumbprint))
                    spent: dict[str, float] = defaultdict(float)
                    with timing(certificates, "_generate", spent), statement_time(instance, _EXPIRING, spent):
                        started = time.perf_counter()
                        lost = certificates.lost(instance, thumbprint, "bench")
                        total = time.perf_counter() - started
                    assert lost.replacement is not None
                    totals.append(total)
                    without_keygen.append(total - spent["_generate"])
                    inside["update"].append(spent[_EXPIRING])
                    expired.append(lost.expired_passwords)
                    fleet.refresh_certificate()
                    peer.key_der = fleet.private_key_der()
                    measured.append(
                        simulated.measure_round(
                            fleet, server.cpu_seconds, server.url, peer, fleet.agents, force=False
                        )
                    )
                workers = server.workers
        finally:
            peer.close()
            instance.close()
        if min(expired) != devices:
            raise RuntimeError(f"expected {devices} passwords expired in each round, got {expired}")
        peer_s = statistics.median(bare)
        figures = [
            results.Figure(
                f"certificate marked lost, {devices:,} devices (without key generation)",
                "s",
                without_keygen,
                peer=peer_s,
                ratio=statistics.median(without_keygen) / peer_s,
                goal=results.Goal("median", "<", 1),
                note="peer: the bare UPDATE of the same rows (sqlite3); ratio: AMS / peer",
            ),
            results.Figure(
                "  of which the UPDATE of the passwords",
                "s",
                inside["update"],
                peer=peer_s,
                ratio=statistics.median(inside["update"]) / peer_s,
                note="the statements that write device_passwords, inside the same call",
            ),
            results.Figure(
                "certificate marked lost, with RSA-4096 key generation",
                "s",
                totals,
                note="the whole service call, as the administrator waits for it",
            ),
        ]
        figures += simulated.throughput_figures(f"{agents} agents after the loss", measured, cores)
        sizes = {
            "devices": devices,
            "agents": agents,
            "rounds": rounds,
            "server_workers": workers or 1,
            "requests_sent_again": sum(r.retried for r in measured),
            "quick": args.quick,
        }
        results.write(NAME, sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
