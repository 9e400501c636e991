"""Directory snapshots against OpenLDAP's offline tools (issue 5, "Speed").

On a generated AD-like directory (organizational units, users, computers, groups with
members), measured in one run on one machine, on the same data:

- ``ams snapshot create`` (the service function) against ``slapcat`` of the same data to LDIF;
- a snapshot restore (request + worker, until the directory is Active again and the replaced
  entries are gone) against ``slapadd -q`` of that LDIF into an empty mdb database that
  keeps the same equality indexes (uid, cn, mail, member) as AMS.

Both sides run once untimed first (so both read from a warm page cache), then ``--repeat``
times each, interleaved (AMS first on odd rounds, the peer first on even ones), so a burst
of load on the shared machine hits both. Each side is timed end to end, and the ratio is
the peer's median time over AMS's median time: above 1 means AMS is faster. The best times
and their ratio are printed too. Usage::

    python -m bench.directory_bench [--entries 100000] [--repeat 5] [--keep DIR] [--quick]
    BENCH_DIRECTORY_ENTRIES=20000 python -m bench directory      # through `make bench`

Results: bench/results/directory.json (bench/results.py; ``--results DIR`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ams.directory import directories, ldif, objects, restore, snapshots
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance, open_instance
from bench import results

SUFFIX = "dc=corp,dc=example,dc=com"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name) if p.is_file()), None
    )
    if found is None:
        raise SystemExit(f"{name} is not installed: install the Debian package slapd (`.ci/run` does)")
    return found


def generate(total: int) -> Iterator[Entry]:
    """About 1% OUs, 70% users, 20% computers, 9% groups (20 members each)."""
    yield Entry(SUFFIX, ["top", "dcObject", "organization"], {"dc": ["corp"], "o": ["Example Corp"]})
    ous = max(3, total // 100)
    users = total * 70 // 100
    computers = total * 20 // 100
    groups = max(1, total - 1 - ous - users - computers)
    for kind in ("Users", "Computers", "Groups"):
        yield Entry(f"ou={kind},{SUFFIX}", ["top", "organizationalUnit"], {"ou": [kind]})
    for i in range(ous - 3):
        yield Entry(f"ou=Dept{i},ou=Users,{SUFFIX}", ["top", "organizationalUnit"], {"ou": [f"Dept{i}"]})
    depts = max(1, ous - 3)
    for i in range(users):
        yield Entry(
            f"uid=u{i},ou=Dept{i % depts},ou=Users,{SUFFIX}" if ous > 3 else f"uid=u{i},ou=Users,{SUFFIX}",
            ["top", "person", "organizationalPerson", "inetOrgPerson"],
            {
                "uid": [f"u{i}"],
                "cn": [f"User Number {i}"],
                "sn": [f"Number{i}"],
                "givenName": ["User"],
                "displayName": [f"User Number {i}"],
                "mail": [f"u{i}@corp.example.com"],
                "telephoneNumber": [f"+1 555 {i:07d}"],
                "title": ["Engineer"],
                "employeeNumber": [str(100000 + i)],
                "description": [f"Account of user {i} in department {i % depts}"],
            },
        )
    for i in range(computers):
        yield Entry(
            f"cn=WS{i:06d},ou=Computers,{SUFFIX}",
            ["top", "device"],
            {"cn": [f"WS{i:06d}"], "serialNumber": [f"SN{i:08d}"], "description": ["Windows workstation"]},
        )
    for g in range(groups):
        dns = [
            f"uid=u{m},ou=Dept{m % depts},ou=Users,{SUFFIX}" if ous > 3 else f"uid=u{m},ou=Users,{SUFFIX}"
            for m in range(g, users, max(1, users // 20))
        ][:20] or [f"ou=Users,{SUFFIX}"]
        members: list[str | bytes] = [*dns]
        yield Entry(
            f"cn=Group{g},ou=Groups,{SUFFIX}",
            ["top", "groupOfNames"],
            {"cn": [f"Group{g}"], "member": members},
        )


def slapd_config(folder: Path) -> Path:
    (folder / "db").mkdir(parents=True)
    conf = folder / "slapd.conf"
    lines = [f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS]
    lines += [
        "modulepath /usr/lib/ldap",
        "moduleload back_mdb",
        f"pidfile {folder}/slapd.pid",
        "database mdb",
        "maxsize 8589934592",
        f'suffix "{SUFFIX}"',
        f"directory {folder}/db",
        # The equality index AMS keeps of these entries (ams.directory.valueindex: of the
        # attributes it indexes, the generated entries have these four), so that
        # slapadd builds what a restore builds.
        "index uid,cn,mail,member eq",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def empty_database(folder: Path) -> None:
    shutil.rmtree(folder / "db")
    (folder / "db").mkdir()


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed: {proc.stderr.strip()}")
    return elapsed


def interleaved(
    repeat: int, ams: Callable[[], float], peer: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """One untimed run of each (warm caches), then ``repeat`` timed rounds, the order
    alternating so that neither side always runs right after the other."""
    ams()
    peer()
    ams_times, peer_times = [], []
    for i in range(repeat):
        if i % 2 == 0:
            ams_times.append(ams())
            peer_times.append(peer())
        else:
            peer_times.append(peer())
            ams_times.append(ams())
    return ams_times, peer_times


@dataclass(frozen=True)
class Result:
    entries: int
    repeat: int
    load: tuple[float, float]  # the 1-minute load average before and after
    snapshot_bytes: int
    slapcat_bytes: int
    # Seconds, one per timed round.
    snapshot_create: list[float]
    slapcat: list[float]
    snapshot_restore: list[float]
    snapshot_restore_active: list[float]  # until the switch: the directory is Active
    slapadd: list[float]


def run(entries: int, work: Path, repeat: int = 5) -> Result:
    slapadd, slapcat = _tool("slapadd"), _tool("slapcat")
    generated = work / "generated.ldif"
    with open(generated, "w", encoding="utf-8") as out:
        for chunk in ldif.emit(generate(entries)):
            out.write(chunk)
    first = slapd_config(work / "ldap1")
    timed([slapadd, "-q", "-f", str(first), "-l", str(generated)])
    cat = work / "slapcat.ldif"
    timed([slapcat, "-f", str(first), "-l", str(cat)])
    load_before = os.getloadavg()[0]

    home = Home(work / "ams")
    create_instance(home, recovery_password="Bench-Orbit-Lantern-4471-x", actor="bench")  # noqa: S106 - throwaway
    instance = open_instance(home)
    try:
        directory_id = directories.create(
            instance, dns_name="corp.example.com", short_name="CORP", actor="bench"
        ).id
        count = objects.import_entries(instance, directory_id, ldif.parse(cat.read_bytes()), actor="bench")

        # Create: snapshot (deleted after each round, for the 5-snapshot limit) vs slapcat.
        sizes: list[int] = []

        def ams_create() -> float:
            started = time.perf_counter()
            snap = snapshots.create(instance, directory_id, actor="bench")
            elapsed = time.perf_counter() - started
            sizes.append(snap.size or 0)
            snapshots.delete(instance, snap.id, actor="bench")
            return elapsed

        def peer_create() -> float:
            out = work / "slapcat-round.ldif"
            elapsed = timed([slapcat, "-f", str(first), "-l", str(out)])
            out.unlink()
            return elapsed

        create_ams, create_peer = interleaved(repeat, ams_create, peer_create)

        # Restore: one snapshot restored again and again vs slapadd into an emptied database.
        snap = snapshots.create(instance, directory_id, actor="bench")
        second = slapd_config(work / "ldap2")
        until_active: list[float] = []

        def ams_restore() -> float:
            active_at: list[float] = []

            def note(stage: str, _count: int) -> None:
                if stage == "switched":  # the directory is Active with the snapshot's entries
                    active_at.append(time.perf_counter())

            started = time.perf_counter()
            snapshots.restore(instance, snap.id, actor="bench")
            [result] = restore.run_pending(instance, hook=note)
            elapsed = time.perf_counter() - started
            assert result.state == "done", result.reason
            until_active.append(active_at[0] - started)
            return elapsed

        def peer_restore() -> float:
            empty_database(second.parent)
            return timed([slapadd, "-q", "-f", str(second), "-l", str(cat)])

        restore_ams, restore_peer = interleaved(repeat, ams_restore, peer_restore)
        assert directories.get(instance, directory_id).entry_count == count
    finally:
        instance.close()
    return Result(
        entries=count,
        repeat=repeat,
        load=(load_before, os.getloadavg()[0]),
        snapshot_bytes=sizes[-1],
        slapcat_bytes=cat.stat().st_size,
        snapshot_create=create_ams,
        slapcat=create_peer,
        snapshot_restore=restore_ams,
        snapshot_restore_active=until_active[1:],  # the first was the untimed round
        slapadd=restore_peer,
    )


def _line(what: str, ams: list[float], peer_name: str, peer: list[float]) -> str:
    med_ams, med_peer = statistics.median(ams), statistics.median(peer)
    ratio = med_peer / med_ams
    return (
        f"{what:<26} median {med_ams:.2f} s (best {min(ams):.2f}, worst {max(ams):.2f})  vs  "
        f"{peer_name} median {med_peer:.2f} s (best {min(peer):.2f}, worst {max(peer):.2f})\n"
        f"{'':<26} -> ratio {ratio:.2f} at the median, {min(peer) / min(ams):.2f} best to best  "
        f"({'ok' if ratio >= 1 else 'SLOWER'})"
    )


def report(r: Result) -> str:
    return "\n".join(
        [
            f"entries: {r.entries} (AD-like: OUs, users, computers, groups); {r.repeat} timed rounds "
            f"each, interleaved, after one untimed; load average {r.load[0]:.1f} -> {r.load[1]:.1f}",
            _line("snapshot create", r.snapshot_create, "slapcat", r.slapcat),
            _line("snapshot restore (total)", r.snapshot_restore, "slapadd -q", r.slapadd),
            _line("restore until Active", r.snapshot_restore_active, "slapadd -q", r.slapadd),
            f"files: snapshot {r.snapshot_bytes / 1e6:.1f} MB, slapcat LDIF {r.slapcat_bytes / 1e6:.1f} MB",
        ]
    )


def figures(r: Result) -> list[results.Figure]:
    def ratio(ams: list[float], peer: list[float]) -> float:
        return statistics.median(peer) / statistics.median(ams)

    faster = "ratio: peer / AMS (medians; above 1: AMS is faster)"
    return [
        results.Figure(
            "snapshot create",
            "s",
            r.snapshot_create,
            peer=statistics.median(r.slapcat),
            ratio=ratio(r.snapshot_create, r.slapcat),
            goal=results.Goal("ratio", ">=", 1),
            note=f"peer: slapcat of the same data to LDIF; {faster}",
        ),
        results.Figure(
            "snapshot restore, total",
            "s",
            r.snapshot_restore,
            peer=statistics.median(r.slapadd),
            ratio=ratio(r.snapshot_restore, r.slapadd),
            goal=results.Goal("ratio", ">=", 1),
            note=(
                "peer: slapadd -q of that LDIF into an empty mdb database with the same equality "
                f"indexes; {faster}"
            ),
        ),
        results.Figure(
            "  restore until Active",
            "s",
            r.snapshot_restore_active,
            peer=statistics.median(r.slapadd),
            ratio=ratio(r.snapshot_restore_active, r.slapadd),
            note="until the switch commits and the directory serves the snapshot's entries",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.directory_bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--entries",
        type=int,
        default=int(os.environ.get("BENCH_DIRECTORY_ENTRIES", "0")),
        help="directory size (default 100000; --quick: 2000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("BENCH_DIRECTORY_REPEAT", "0")),
        help="timed rounds of each side, the median counts (default 5; --quick: 1)",
    )
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.entries = args.entries or (2000 if args.quick else 100_000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    if args.entries < 10:
        parser.error("--entries must be 10 or more")
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    if args.keep:
        args.keep.mkdir(parents=True)
        outcome = run(args.entries, args.keep, args.repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="ams-directory-bench-") as tmp:
            outcome = run(args.entries, Path(tmp), args.repeat)
    print(report(outcome), flush=True)
    sizes = {
        "entries": outcome.entries,
        "rounds": args.repeat,
        "snapshot_mb": round(outcome.snapshot_bytes / 1e6, 1),
        "slapcat_ldif_mb": round(outcome.slapcat_bytes / 1e6, 1),
        "quick": args.quick,
    }
    results.write("directory", sizes, figures(outcome), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
