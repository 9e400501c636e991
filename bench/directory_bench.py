"""Directory snapshots against OpenLDAP's offline tools (issue 5, "Speed").

On a generated AD-like directory (organizational units, users, computers, groups with
members), measured in one run on one machine:

- ``ams snapshot create`` (the service function) against ``slapcat`` of the same data to LDIF;
- a snapshot restore (request + worker, until the directory is Active again) against
  ``slapadd -q`` of that LDIF into an empty mdb database.

A ratio above 1 means AMS is faster. Usage::

    python -m bench.directory_bench [--entries 100000] [--keep DIR]
    BENCH_DIRECTORY_ENTRIES=20000 python -m bench        # through `make bench`
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ams.directory import directories, ldif, objects, restore, snapshots
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance, open_instance

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
        members = [
            f"uid=u{m},ou=Dept{m % depts},ou=Users,{SUFFIX}" if ous > 3 else f"uid=u{m},ou=Users,{SUFFIX}"
            for m in range(g, users, max(1, users // 20))
        ][:20] or [f"ou=Users,{SUFFIX}"]
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
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed: {proc.stderr.strip()}")
    return elapsed


def run(entries: int, work: Path) -> dict[str, float]:
    slapadd, slapcat = _tool("slapadd"), _tool("slapcat")
    generated = work / "generated.ldif"
    with open(generated, "w", encoding="utf-8") as out:
        for chunk in ldif.emit(generate(entries)):
            out.write(chunk)
    first = slapd_config(work / "ldap1")
    timed([slapadd, "-q", "-f", str(first), "-l", str(generated)])

    cat = work / "slapcat.ldif"
    t_slapcat = timed([slapcat, "-f", str(first), "-l", str(cat)])

    home = Home(work / "ams")
    create_instance(home, recovery_password="Bench-Orbit-Lantern-4471-x", actor="bench")  # noqa: S106 - throwaway
    instance = open_instance(home)
    try:
        directory_id = directories.create(
            instance, dns_name="corp.example.com", short_name="CORP", actor="bench"
        ).id
        count = objects.import_entries(instance, directory_id, ldif.parse(cat.read_bytes()), actor="bench")

        started = time.perf_counter()
        snap = snapshots.create(instance, directory_id, actor="bench")
        t_snapshot = time.perf_counter() - started

        second = slapd_config(work / "ldap2")
        t_slapadd = timed([slapadd, "-q", "-f", str(second), "-l", str(cat)])

        active_at: list[float] = []

        def note(stage: str, _count: int) -> None:
            if stage == "switched":  # the directory is Active with the snapshot's entries
                active_at.append(time.perf_counter())

        started = time.perf_counter()
        snapshots.restore(instance, snap.id, actor="bench")
        [result] = restore.run_pending(instance, hook=note)
        t_restore = time.perf_counter() - started
        t_active = active_at[0] - started
        assert result.state == "done", result.reason
        assert directories.get(instance, directory_id).entry_count == count
    finally:
        instance.close()
    return {
        "entries": float(count),
        "snapshot_bytes": float(snap.size or 0),
        "slapcat_bytes": float(cat.stat().st_size),
        "slapcat_s": t_slapcat,
        "snapshot_create_s": t_snapshot,
        "slapadd_s": t_slapadd,
        "snapshot_restore_s": t_restore,
        "snapshot_restore_active_s": t_active,
    }


def report(r: dict[str, float]) -> str:
    create_ratio = r["slapcat_s"] / r["snapshot_create_s"]
    restore_ratio = r["slapadd_s"] / r["snapshot_restore_s"]
    return "\n".join(
        [
            f"entries: {int(r['entries'])} (AD-like: OUs, users, computers, groups)",
            f"snapshot create {r['snapshot_create_s']:.2f} s  vs  slapcat {r['slapcat_s']:.2f} s  "
            f"-> ratio {create_ratio:.2f} ({'ok' if create_ratio >= 1 else 'SLOWER'})",
            f"snapshot restore {r['snapshot_restore_s']:.2f} s  vs  slapadd -q {r['slapadd_s']:.2f} s  "
            f"-> ratio {restore_ratio:.2f} ({'ok' if restore_ratio >= 1 else 'SLOWER'})",
            f"  of which until Active {r['snapshot_restore_active_s']:.2f} s (ratio "
            f"{r['slapadd_s'] / r['snapshot_restore_active_s']:.2f}); the rest removes the replaced entries",
            f"files: snapshot {r['snapshot_bytes'] / 1e6:.1f} MB, "
            f"slapcat LDIF {r['slapcat_bytes'] / 1e6:.1f} MB",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.directory_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--entries",
        type=int,
        default=int(os.environ.get("BENCH_DIRECTORY_ENTRIES", "100000")),
        help="directory size",
    )
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = parser.parse_args(sys.argv[1:])
    if args.entries < 10:
        parser.error("--entries must be 10 or more")
    if args.keep:
        args.keep.mkdir(parents=True)
        print(report(run(args.entries, args.keep)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="ams-directory-bench-") as tmp:
        print(report(run(args.entries, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
