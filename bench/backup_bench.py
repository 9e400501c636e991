"""Backup and restore speed and memory, against the sqlite3 command on the same database.

Issue 4's targets: on an instance with 100,000 devices and 10 history passwords each,
``ams backup create`` and ``ams backup restore`` within 1.3x the time of ``sqlite3``'s own
``.backup`` / ``.restore`` of the same database, measured in the same run; agent writes
during a backup never blocked longer than 100 ms at p99; peak memory of create and restore
below 200 MB whatever the database size.

Parameters (environment or arguments): ``AMS_BENCH_DEVICES`` / ``--devices N`` (default
100000), ``AMS_BENCH_HISTORY`` / ``--history N`` (default 10), ``AMS_BENCH_ROUNDS`` /
``--rounds N`` (default 3: each side runs N times, alternating, and the medians are
compared, after one untimed run of each); ``--quick``: 2,000 devices x 2, one round;
``--results DIR`` (bench/results.py). Before every timed run the previous run's output
is deleted and the disk is allowed to settle (``sync``, then one second): each side writes
about as much as the database, and whichever ran second would otherwise pay for writing
back the other's gigabyte. Blobs are random bytes of the real size (a backup never
decrypts them), so generating a large instance stays fast. The service functions are timed
in-process the same way (medians). The writer's latency is measured during one more ``ams
backup create``, outside the time ratio: sqlite3's ``.backup`` restarts whenever the
database changes, so it cannot be timed beside a writer.

Run: ``python -m bench backup`` or ``python bench/backup_bench.py --devices 10000``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from ams.home import Home
from ams.instance import create_instance
from bench import results

AMS = Path(sys.executable).parent / "ams"
RECOVERY = "Bench-Recovery-Lantern-4471"
BLOB_BYTES = 690  # AMSP header + RSA-4096 wrapped key + nonce + a small JSON + tag


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}


def generate(root: Path, devices: int, history: int) -> Home:
    home = Home(root / "home")
    create_instance(home, recovery_password=RECOVERY, actor="bench")
    now = datetime.now(UTC).replace(tzinfo=None)
    conn = sqlite3.connect(home.sqlite_path)
    conn.execute("PRAGMA journal_mode=WAL")
    thumb = "ab" * 32
    with conn:
        for start in range(0, devices, 5000):
            rows = [
                (
                    f"dev_{i:016x}",
                    f"pc-{i}",
                    "agent",
                    None,
                    "0" * 64,
                    "active",
                    now,
                    now,
                    now,
                    history,
                    0,
                    None,
                )
                for i in range(start, min(devices, start + 5000))
            ]
            conn.executemany(
                "INSERT INTO devices (id, name, scope, registration_key_id, token_hash, status, created_at,"
                " approved_at, last_seen_at, current_version, force_rotation, forced_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            pw = [
                (
                    f"dev_{i:016x}",
                    v,
                    "Administrator",
                    os.urandom(BLOB_BYTES),
                    thumb,
                    f"rq_{i:016x}_{v}",
                    now,
                    now,
                    v == history,
                    None,
                    None,
                    0,
                    now,
                )
                for i in range(start, min(devices, start + 5000))
                for v in range(1, history + 1)
            ]
            conn.executemany(
                "INSERT INTO device_passwords (device_id, version, account, blob, certificate_thumbprint,"
                " request_id, effective_at, expires_at, is_current, superseded_at, replaces_id,"
                " answered_force, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                pw,
            )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return home


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _settle() -> None:
    """Let the page cache write back what earlier runs left dirty, so no run pays for another."""
    os.sync()
    time.sleep(1.0)


def _child_peak(argv: list[str], stdin: str | None = None) -> tuple[float, float, str]:
    """Seconds, the child's peak RSS (MB: VmHWM of its own address space, polled), stdout.

    The disk settles first (:func:`_settle`), outside the time.
    """
    _settle()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    peak = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _hwm_mb(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=poll)
    watcher.start()
    out, err = proc.communicate(stdin.encode() if stdin is not None else None)
    done.set()
    watcher.join()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {err.decode().strip()}")
    return elapsed, peak, out.decode()


def _in_process(home: Home, root: Path, rounds: int) -> tuple[list[float], list[float]]:
    """The service functions alone (no CLI start-up), ``rounds`` times each after one untimed
    run: create (what scheduled and API backups run), and restore into a new home."""
    from ams import backup
    from ams.instance import open_instance

    creates: list[float] = []
    restores: list[float] = []
    made = None
    instance = open_instance(home)
    try:
        for timed in (False, *([True] * rounds)):
            if made is not None:
                made.path.unlink()
            _settle()
            started = time.perf_counter()
            made = backup.create_backup(instance, actor="bench", dest=root / "inproc")
            if timed:
                creates.append(time.perf_counter() - started)
    finally:
        instance.close()
    assert made is not None
    target = root / "inproc-restored"
    for timed in (False, *([True] * rounds)):
        shutil.rmtree(target, ignore_errors=True)
        _settle()
        started = time.perf_counter()
        backup.restore_backup(made.path, Home(target), actor="bench", password=lambda hint: RECOVERY)
        if timed:
            restores.append(time.perf_counter() - started)
    made.path.unlink()
    return creates, restores


def writer_latencies(db: Path, stop: threading.Event, out: list[float]) -> None:
    """An agent-like writer: one small transaction at a time, timing each commit."""
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        with conn:
            conn.execute(
                "INSERT INTO audit_events (event_id, at, actor, outcome, target, details)"
                " VALUES (?,?,?,?,?,?)",
                (1407, datetime.now(UTC).replace(tzinfo=None), "bench", "success", f"w{n}", "{}"),
            )
        out.append(time.perf_counter() - started)
        n += 1
        time.sleep(0.002)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=int(os.environ.get("AMS_BENCH_DEVICES", "0")))
    parser.add_argument("--history", type=int, default=int(os.environ.get("AMS_BENCH_HISTORY", "0")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("AMS_BENCH_ROUNDS", "0")))
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.devices = args.devices or (2000 if args.quick else 100_000)
    args.history = args.history or (2 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="ams-backup-bench-"))
    try:
        t0 = time.perf_counter()
        home = generate(root, args.devices, args.history)
        size_mb = home.sqlite_path.stat().st_size / 1e6
        print(
            f"generated {args.devices:,} devices x {args.history} passwords: {size_mb:.0f} MB"
            f" in {time.perf_counter() - t0:.1f} s"
        )

        # Each side runs `rounds` times, alternating, and the medians are compared: the
        # machine is shared, and one slow fsync must not decide the ratio.
        copy = root / "sqlite-copy.db"
        sq_backups: list[float] = []
        creates: list[tuple[float, float]] = []
        latencies: list[float] = []
        archive: Path | None = None
        create_argv = [str(AMS), "backup", "create", "--json", "--home", str(home.root)]
        for timed in (False, *([True] * args.rounds)):  # one untimed round first: warm caches
            copy.unlink(missing_ok=True)
            sq_backup_s = _child_peak(["sqlite3", str(home.sqlite_path), f".backup {copy}"])[0]
            if archive is not None:
                archive.unlink()
            create_s, create_mb, out = _child_peak(create_argv)
            archive = Path(json.loads(out)["path"])
            if timed:
                sq_backups.append(sq_backup_s)
                creates.append((create_s, create_mb))
        assert archive is not None
        # The writer's latency, in one more backup: not in the time ratio, since sqlite3's
        # .backup cannot run beside a writer at all (it restarts whenever the database changes).
        stop = threading.Event()
        writer = threading.Thread(target=writer_latencies, args=(home.sqlite_path, stop, latencies))
        writer.start()
        try:
            busy_s, busy_mb, busy_out = _child_peak(create_argv)
        finally:
            stop.set()
            writer.join()
        Path(json.loads(busy_out)["path"]).unlink()
        create_mb = max(create_mb, busy_mb)
        sq_backup = statistics.median(sq_backups)
        create_s = statistics.median(t for t, _ in creates)
        create_mb = max(create_mb, *(m for _, m in creates))

        sq_restores: list[float] = []
        restores: list[tuple[float, float]] = []
        target = root / "sqlite-restored.db"
        new_home = root / "restored"
        for timed in (False, *([True] * args.rounds)):
            target.unlink(missing_ok=True)
            sqlite3.connect(target).close()
            sq_restore_s = _child_peak(["sqlite3", str(target), f".restore {copy}"])[0]
            shutil.rmtree(new_home, ignore_errors=True)
            restore_s, restore_mb, _ = _child_peak(
                [str(AMS), "backup", "restore", str(archive), "--password-stdin", "--home", str(new_home)],
                RECOVERY + "\n",
            )
            if timed:
                sq_restores.append(sq_restore_s)
                restores.append((restore_s, restore_mb))
        sq_restore = statistics.median(sq_restores)
        restore_s = statistics.median(t for t, _ in restores)
        restore_mb = max(m for _, m in restores)
        inplace_s, inplace_mb, _ = _child_peak(
            [str(AMS), "backup", "restore", str(archive), "--yes", "--home", str(home.root)]
        )
        inproc_creates, inproc_restores = _in_process(home, root, args.rounds)
        inproc_create = statistics.median(inproc_creates)
        inproc_restore = statistics.median(inproc_restores)
        p99 = (
            statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies, default=0)
        )
        rows = {
            "rounds (medians below)": args.rounds,
            "devices": args.devices,
            "history": args.history,
            "database_mb": round(size_mb, 1),
            "archive_mb": round(archive.stat().st_size / 1e6, 1),
            "sqlite3_backup_s (each round)": " ".join(f"{t:.2f}" for t in sq_backups),
            "ams_create_s (each round)": " ".join(f"{t:.2f}" for t, _ in creates),
            "sqlite3_restore_s (each round)": " ".join(f"{t:.2f}" for t in sq_restores),
            "ams_restore_s (each round)": " ".join(f"{t:.2f}" for t, _ in restores),
            "sqlite3_backup_s": round(sq_backup, 2),
            "ams_create_s": round(create_s, 2),
            "create_ratio": round(create_s / sq_backup, 2),
            "sqlite3_restore_s": round(sq_restore, 2),
            "ams_restore_new_home_s": round(restore_s, 2),
            "restore_ratio": round(restore_s / sq_restore, 2),
            "ams_restore_in_place_s (with pre-restore backup)": round(inplace_s, 2),
            "in_process_create_s (each round)": " ".join(f"{t:.2f}" for t in inproc_creates),
            "in_process_restore_s (each round)": " ".join(f"{t:.2f}" for t in inproc_restores),
            "in_process_create_s": round(inproc_create, 2),
            "in_process_create_ratio": round(inproc_create / sq_backup, 2),
            "in_process_restore_s (incl. Argon2id unlock)": round(inproc_restore, 2),
            "in_process_restore_ratio": round(inproc_restore / sq_restore, 2),
            "peak_mb_create": round(create_mb, 1),
            "peak_mb_restore_new_home": round(restore_mb, 1),
            "peak_mb_restore_in_place": round(inplace_mb, 1),
            "ams_create_s beside the writer": round(busy_s, 2),
            "writes_during_backup": len(latencies),
            "writer_p99_ms": round(p99 * 1000, 1),
            "writer_max_ms": round(max(latencies, default=0) * 1000, 1),
        }
        for key, value in rows.items():
            print(f"  {key:<50} {value}")
        figures = [
            results.Figure(
                "ams backup create",
                "s",
                [t for t, _ in creates],
                peer=sq_backup,
                ratio=create_s / sq_backup,
                goal=results.Goal("ratio", "<=", 1.3),
                note="peer: sqlite3 .backup of the same database; ratio: AMS / peer (medians)",
            ),
            results.Figure(
                "ams backup restore (new home)",
                "s",
                [t for t, _ in restores],
                peer=sq_restore,
                ratio=restore_s / sq_restore,
                goal=results.Goal("ratio", "<=", 1.3),
                note="peer: sqlite3 .restore of the same database; ratio: AMS / peer (medians)",
            ),
            results.Figure(
                "  create, service function in-process",
                "s",
                inproc_creates,
                peer=sq_backup,
                ratio=inproc_create / sq_backup,
                note="what scheduled and API backups run: no CLI start-up",
            ),
            results.Figure(
                "  restore, service function in-process",
                "s",
                inproc_restores,
                peer=sq_restore,
                ratio=inproc_restore / sq_restore,
                note="Argon2id unlock included",
            ),
            results.Figure(
                "agent writes during a backup, p99",
                "ms",
                [p99 * 1000],
                goal=results.Goal("median", "<=", 100),
                note=f"{len(latencies)} commits during one ams backup create;"
                f" max {max(latencies, default=0) * 1000:.0f} ms",
            ),
            results.Figure(
                "peak memory of create, restore, restore in place",
                "MB",
                [create_mb, restore_mb, inplace_mb],
                goal=results.Goal("max", "<", 200),
                note="VmHWM of the command's process",
            ),
        ]
        sizes = {
            "devices": args.devices,
            "history": args.history,
            "rounds": args.rounds,
            "database_mb": round(size_mb, 1),
            "quick": args.quick,
        }
        results.write("backup", sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
