"""The LDAP endpoint against OpenLDAP's slapd serving the same entries (issue 14).

Both servers run on loopback on this machine with the same generated AD-like directory
(bench.directory_bench's generator: OUs, users, computers, groups):

- AMS: a new home, the entries imported, ``ams serve --ldap-port``;
- slapd: Debian's, ``slapd -h ldap://127.0.0.1:PORT -f slapd.conf`` with the mdb backend in
  a temporary folder (indexes: objectClass, uid, cn, mail equality, as a small site keeps
  them), loaded with ``slapadd`` from AMS's own LDIF export, stopped at the end.

One ldap3 client, bound as each server's administrator, runs each operation ``--ops``
times against each server, interleaved in rounds so a burst of load on the shared machine
hits both: an equality search on ``uid`` (subtree from the root), a subtree search with a
substring filter on ``cn`` (one match), a base read of one entry, and a modify (replace
of ``description``). Latencies are per operation, in milliseconds; a figure's ratio is
AMS's median over slapd's (below 1: AMS is faster). Goal: searches within 3x of slapd.

    python -m bench.ldap_bench [--entries 100000] [--ops 200] [--quick] [--results DIR] [--profile DIR]

Results go to ``bench/results/ldap.json`` (the common format: benchmark, machine, sizes,
figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.directory_bench import SCHEMAS, SUFFIX, generate

ADMIN_PASSWORD = "Bench-Passw0rd!"  # noqa: S105 - both throwaway servers' admin, on loopback
RESULTS = Path(__file__).parent / "results"


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name) if p.is_file()), None
    )
    if found is None:
        raise SystemExit(f"{name} is not installed: install the Debian package slapd (`.ci/run` does)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on {port} in time")


def _ams(*args: str, home: Path, stdin: str | None = None) -> str:
    ams = str(Path(sys.executable).parent / "ams")
    proc = subprocess.run(
        [ams, *args, "--home", str(home)], input=stdin, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise SystemExit(f"ams {args[0]} {args[1] if len(args) > 1 else ''} failed: {proc.stderr.strip()}")
    return proc.stdout


def _slapd_conf(folder: Path) -> Path:
    (folder / "db").mkdir(parents=True)
    conf = folder / "slapd.conf"
    lines = [f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS]
    lines += [
        "modulepath /usr/lib/ldap",
        "moduleload back_mdb",
        f"pidfile {folder}/slapd.pid",
        f"argsfile {folder}/slapd.args",
        "sizelimit unlimited",
        "database mdb",
        "maxsize 8589934592",
        f'suffix "{SUFFIX}"',
        f'rootdn "cn=admin,{SUFFIX}"',
        f"rootpw {ADMIN_PASSWORD}",
        f"directory {folder}/db",
        "index objectClass eq",
        "index uid,cn,mail eq",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _connection(port: int, user: str) -> Any:
    import ldap3

    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=user, password=ADMIN_PASSWORD, auto_bind=True, read_only=False)
    return conn


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _figure(name: str, ams: list[float], peer: list[float], goal: float | None) -> dict[str, Any]:
    ratio = _median(ams) / _median(peer)
    return {
        "name": name,
        "unit": "ms",
        "min": round(min(ams), 4),
        "median": round(_median(ams), 4),
        "max": round(max(ams), 4),
        "peer": round(_median(peer), 4),
        "ratio": round(ratio, 3),
        "goal": None if goal is None else f"ratio <= {goal:g}",
        "met": None if goal is None else ratio <= goal,
        "note": "median latency per operation; peer: slapd's median; ratio: AMS over slapd (lower is better)",
    }


def _machine() -> dict[str, Any]:
    from bench import results

    return results.machine()


def run(entries: int, ops: int, work: Path, profile: Path | None = None) -> dict[str, Any]:
    home = work / "ams-home"
    _ams("init", "--generate-recovery-password", home=home)
    dns = SUFFIX.replace("dc=", "").replace(",", ".")
    created = json.loads(
        _ams(
            "directory",
            "create",
            dns,
            "--admin-password-stdin",
            "--json",
            home=home,
            stdin=ADMIN_PASSWORD + "\n",
        )
    )
    directory_id = created["id"]
    ldif_file = work / "data.ldif"
    from ams.directory import ldif

    with ldif_file.open("w") as out:
        for chunk in ldif.emit(list(generate(entries))):
            out.write(chunk)
    _ams("directory", "import", directory_id, str(ldif_file), home=home)

    slapd_dir = work / "slapd"
    conf = _slapd_conf(slapd_dir)
    subprocess.run(
        [_tool("slapadd"), "-q", "-f", str(conf), "-l", str(ldif_file)], check=True, capture_output=True
    )

    ams_port, slapd_port, http_port = _free_port(), _free_port(), _free_port()
    ams_cmd = [str(Path(sys.executable).parent / "ams"), "serve", "--home", str(home),
               "--port", str(http_port), "--ldap-port", str(ams_port)]  # fmt: skip
    ams_proc = subprocess.Popen(ams_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slapd_proc = subprocess.Popen(
        [_tool("slapd"), "-d", "0", "-h", f"ldap://127.0.0.1:{slapd_port}/", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(ams_port, ams_proc, "ams serve")
        _wait_port(slapd_port, slapd_proc, "slapd")
        # `ams serve` takes the directory's first automatic snapshot at start: measured
        # during it, AMS would share the CPU with it. Wait until it is written.
        deadline = time.monotonic() + 600
        while not any(
            s["type"] == "Auto" and s["status"] == "Completed"
            for s in json.loads(_ams("snapshot", "list", directory_id, "--json", home=home))
        ):
            if time.monotonic() > deadline:
                raise SystemExit("ams serve did not take its automatic snapshot in time")
            time.sleep(1)
        ams_conn = _connection(ams_port, f"Admin@{dns}")
        peer_conn = _connection(slapd_port, f"cn=admin,{SUFFIX}")
        users = entries * 70 // 100
        depts = max(1, max(3, entries // 100) - 3)
        rng = random.Random(14)
        picks = [rng.randrange(users) for _ in range(ops)]

        def user_dn(i: int) -> str:
            return f"uid=u{i},ou=Dept{i % depts},ou=Users,{SUFFIX}"

        def finds_one(
            base: Callable[[int], str], search_filter: Callable[[int], str], **options: Any
        ) -> Callable[[Any, int], None]:
            """A search that must find exactly one entry."""

            def run(conn: Any, i: int) -> None:
                conn.search(base(i), search_filter(i), **options)
                if len(conn.entries) != 1:
                    raise SystemExit(f"a search found {len(conn.entries)} entries, not 1")

            return run

        operations: dict[str, Callable[[Any, int], None]] = {
            "search equality (uid=...), subtree": finds_one(
                lambda i: SUFFIX, lambda i: f"(uid=u{i})", attributes=["*"]
            ),
            "search substring (cn=*...*), subtree": finds_one(
                lambda i: SUFFIX, lambda i: f"(cn=*Number {i})", attributes=["cn", "mail"]
            ),
            "read one entry (base scope)": finds_one(
                user_dn, lambda i: "(objectClass=*)", search_scope="BASE", attributes=["*"]
            ),
            "modify (replace description)": lambda c, i: c.modify(
                user_dn(i), {"description": [("MODIFY_REPLACE", [f"changed {time.time()}"])]}
            ),
        }
        # Warm both (page caches, AMS's first queries).
        for fn in operations.values():
            for i in picks[:5]:
                fn(ams_conn, i)
                fn(peer_conn, i)
        timings: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in operations}
        for round_no, i in enumerate(picks):
            for name, fn in operations.items():
                pair = [(ams_conn, timings[name][0]), (peer_conn, timings[name][1])]
                for conn, into in pair if round_no % 2 == 0 else reversed(pair):
                    started = time.perf_counter()
                    fn(conn, i)
                    into.append((time.perf_counter() - started) * 1000)
                    if name.startswith("modify") and conn.result["result"] != 0:
                        raise SystemExit(f"a modify failed: {conn.result}")
        if profile is not None:
            # Back-to-back searches of the two kinds the goal is about, AMS alone, sampled.
            from bench.spy import profiled

            with profiled(ams_proc.pid, profile / "ldap-searches.txt", rate=400):
                for _ in range(4):
                    for i in picks:
                        operations["search equality (uid=...), subtree"](ams_conn, i)
                        operations["read one entry (base scope)"](ams_conn, i)
        ams_conn.unbind()
        peer_conn.unbind()
    finally:
        for proc in (ams_proc, slapd_proc):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    figures = [
        _figure(name, ams, peer, None if name.startswith("modify") else 3.0)
        for name, (ams, peer) in timings.items()
    ]
    return {
        "benchmark": "ldap",
        "machine": _machine(),
        "sizes": {"entries": entries, "operations": ops},
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ldap_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=int(os.environ.get("BENCH_LDAP_ENTRIES", "100000")))
    parser.add_argument("--ops", type=int, default=200, help="operations of each kind against each server")
    parser.add_argument("--quick", action="store_true", help="5,000 entries, 50 operations (under a minute)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for ldap.json")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the timed rounds, sample AMS's searches with py-spy into this folder",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    entries, ops = (5000, 50) if args.quick else (args.entries, args.ops)
    if args.keep:
        args.keep.mkdir(parents=True)
        result = run(entries, ops, args.keep, args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="ams-ldap-bench-") as tmp:
            result = run(entries, ops, Path(tmp), args.profile)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ldap.json").write_text(json.dumps(result, indent=2) + "\n")
    for f in result["figures"]:
        met = "" if f["met"] is None else ("  goal met" if f["met"] else "  GOAL MISSED")
        print(
            f"{f['name']:<40} AMS {f['median']:8.3f} ms  slapd {f['peer']:8.3f} ms  "
            f"ratio {f['ratio']:6.2f}{met}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
