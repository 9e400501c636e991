"""The crash harness: a populated instance built once, a fork server that runs `ams` fast, and
the checks made after every kill (no tests in here).

Why a fork server: each kill point runs an operation, `ams status` and the operation again,
and importing `ams` with SQLAlchemy, Alembic, FastAPI and Typer costs about a second each
time. The fork server (``python crashlib.py --forkserver``) imports all of it once; for each
job it forks a child that runs exactly what the `ams` entry point runs
(``ams.cli.main.run(argv)``) or a small driver function below, with its own stdin, stdout,
stderr, environment and umask. The test SIGKILLs that child by its pid.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECOVERY = "Tangerine-Orbit-Lantern-4471"
ACCOUNT = "Administrator"

# What the fork server imports before it forks anything (everything an `ams` command may load).
PRELOAD = (
    "ams.cli.main",
    "ams.status",
    "ams.instance",
    "ams.backup.create",
    "ams.backup.restore",
    "ams.backup.schedule",
    "ams.backup.scheduler",
    "ams.backup.verify",
    "ams.backup.catalog",
    "ams.directory.snapshots",
    "ams.directory.restore",
    "ams.directory.objects",
    "ams.vault.certificates",
    "ams.vault.passwords",
    "ams.vault.devices",
    "ams.api.app",
    "ams.cli.serve_cmd",
    "uvicorn",
)


# -- the fork server ------------------------------------------------------------------------


def _child(job: dict[str, Any]) -> None:
    """In the forked child: set up stdio, environment, umask; run the job; never return."""
    code = 1
    try:
        stdin = os.open(job.get("stdin") or os.devnull, os.O_RDONLY)
        out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child's whole life
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        for name in [n for n in os.environ if n.startswith("AMS_")]:
            del os.environ[name]
        os.environ.update(job.get("env") or {})
        if job.get("umask") is not None:
            os.umask(int(job["umask"]))
        if job["kind"] == "ams":
            from ams.cli.main import run

            code = run(list(job["args"]))
        else:
            globals()[job["func"]](*job["args"])
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported to the test through stderr and the status
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # nothing more to do at this point
                stream.flush()
        os._exit(code)


def serve_forks() -> None:
    """``--forkserver``: import everything, then one job per stdin line; reply pid, then status."""
    for name in PRELOAD:
        importlib.import_module(name)
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - began  # from the fork to the child's end
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(status), "seconds": seconds}) + "\n")
        out.flush()


@dataclass
class Outcome:
    returncode: int  # -9 when killed
    stdout: str
    stderr: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def clean_error(self) -> bool:
        """Failed, if at all, with one of AMS's own messages (never a traceback)."""
        return "Traceback" not in self.stderr and "internal error" not in self.stderr


def _output(path: Path) -> str:
    """What a job wrote; "" when it was killed before the fork server's child opened its files
    (a kill point at the very start: nothing was done)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class Running:
    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path) -> None:
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.started = time.monotonic()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> Outcome:
        """The job's end; its ``seconds`` are the fork server's, from the fork to the end (not
        to this call, which a kill point's sleep may have delayed)."""
        answer = self.server._read()
        self.server.busy = False
        seconds = float(answer.get("seconds", time.monotonic() - self.started))
        return Outcome(int(answer["status"]), _output(self.out), _output(self.err), seconds)


class ForkServer:
    """The client side: one job at a time."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--forkserver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(scratch),
        )  # fmt: skip
        self.busy = False
        self._n = 0
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def start(
        self,
        args: list[str] | None = None,
        *,
        func: str | None = None,
        func_args: list[Any] | None = None,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        umask: int | None = None,
    ) -> Running:
        assert not self.busy, "one job at a time"
        self._n += 1
        base = self.scratch / f"job{self._n}"
        stdin_path = None
        if stdin is not None:
            stdin_path = base.with_suffix(".in")
            stdin_path.write_text(stdin)
        job = {
            "kind": "ams" if func is None else "func",
            "args": list(args or []) if func is None else list(func_args or []),
            "func": func,
            "stdin": str(stdin_path) if stdin_path else None,
            "stdout": str(base.with_suffix(".out")),
            "stderr": str(base.with_suffix(".err")),
            "env": env or {},
            "umask": umask,
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self.busy = True
        pid = int(self._read()["pid"])
        return Running(self, pid, base.with_suffix(".out"), base.with_suffix(".err"))

    def run(self, args: list[str] | None = None, **kwargs: Any) -> Outcome:
        return self.start(args, **kwargs).wait()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def kill_at(running: Running, after: float) -> Outcome:
    """SIGKILL the job ``after`` seconds from its start (unless it ended before), then reap it."""
    delay = running.started + after - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    running.kill()
    return running.wait()


# -- drivers run in the fork server's children ------------------------------------------------


def drive_prune(home: str, offset_days: str) -> None:
    """Retention pruning as the schedule runs it (after its backup verified), "in the future"."""
    from ams.backup.schedule import prune
    from ams.clock import SystemClock
    from ams.home import Home
    from ams.instance import open_instance

    instance = open_instance(Home(Path(home)), SystemClock(timedelta(days=float(offset_days))))
    try:
        removed = prune(instance, actor="scheduler")
    finally:
        instance.close()
    sys.stdout.write(json.dumps(removed) + "\n")


# -- the template instance ------------------------------------------------------------------


def password_of(seed: str, device: int, version: int) -> str:
    """Every template password, derived (so the facts file stays small)."""
    return hashlib.sha256(f"{seed}/{device}/{version}".encode()).hexdigest()[:20]


def _blob(cert_der: bytes, password: str, version: int, at: datetime) -> bytes:
    from ams.crypto.blob import encrypt_password

    plaintext = json.dumps(
        {"account": ACCOUNT, "password": password, "created_at": at.isoformat(), "version": version}
    ).encode()
    return encrypt_password(cert_der, plaintext)


def build_template(
    root: Path, *, devices: int, entries: int, seed: str, database_url: str = ""
) -> dict[str, Any]:
    """A real instance (`root/home`, on ``database_url``: "" for SQLite) and its facts
    (`root/facts.json`): ``devices`` devices with
    three passwords each under two certificates, a directory of ``entries`` entries with a
    snapshot of its first half, a second directory with a snapshot, ten small backups and one
    full backup (state "t1"), then a hundred more rotations and a changed config file ("t2")."""
    from sqlalchemy import insert, update

    from ams.backup.create import create_backup
    from ams.clock import ManualClock, utcnow
    from ams.crypto import certs, hash_token, random_id, random_secret
    from ams.db.models.vault import Device, DevicePassword
    from ams.directory import directories, objects, snapshots
    from ams.directory.entry import Entry
    from ams.home import Home
    from ams.instance import create_instance, open_instance
    from ams.vault import certificates, passwords, regkeys
    from ams.vault.devices import AuthenticatedDevice

    home = Home(root / "home")
    clock = ManualClock(utcnow() - timedelta(days=2))
    create_instance(
        home, recovery_password=RECOVERY, database_url_option=database_url, actor="test", clock=clock
    )
    inst = open_instance(home, clock)
    try:
        cert_a = certificates.create(inst, "agent", "test", activate=True)
        regkeys.create(inst, "fleet", "test")
        for _ in range(10):  # small backups, for retention pruning
            create_backup(inst, kind="manual", actor="test")
            clock.advance(timedelta(minutes=30))
        ids = [f"dev_{random_id(16)}" for _ in range(devices)]
        secrets = [random_secret(32) for _ in range(devices)]
        tokens = [f"{d}.{s}" for d, s in zip(ids, secrets, strict=True)]  # what ams-agent keeps
        now = clock.now()
        with inst.transaction() as session:
            session.execute(
                insert(Device),
                [
                    {"id": d, "name": f"pc-{n:05d}", "scope": "agent",
                     "token_hash": hash_token(t.partition(".")[2]),
                     "status": "active", "created_at": now, "approved_at": now, "force_rotation": False,
                     "current_version": 3}
                    for n, (d, t) in enumerate(zip(ids, tokens, strict=True))
                ],
            )  # fmt: skip
        der_a = certs.certificate_from_pem(cert_a.pem)
        cert_b = None
        rows: list[dict[str, Any]] = []
        for version in (1, 2, 3):
            if version == 3:
                cert_b = certificates.create(inst, "agent", "test", activate=True)
            der_b = certs.certificate_from_pem(cert_b.pem) if cert_b else der_a
            at = clock.now()
            for n, device in enumerate(ids):
                under_b = version == 3 and n % 2 == 0
                cert = cert_b if under_b else cert_a
                rows.append(
                    {"device_id": device, "version": version, "account": ACCOUNT,
                     "blob": _blob(der_b if under_b else der_a, password_of(seed, n, version), version, at),
                     "certificate_thumbprint": cert.thumbprint if cert else "",
                     "request_id": f"pr_{random_id(32)}", "effective_at": at,
                     "expires_at": at + timedelta(days=30), "is_current": version == 3,
                     "superseded_at": None if version == 3 else at + timedelta(hours=1),
                     "answered_force": False, "created_at": at}
                )  # fmt: skip
            clock.advance(timedelta(hours=1))
        with inst.transaction() as session:
            session.execute(insert(DevicePassword), rows)
            session.execute(update(Device).values(current_version=3))
        corp = directories.create(inst, dns_name="corp.example.com", short_name=None, actor="test")
        lab = directories.create(inst, dns_name="lab.example.com", short_name=None, actor="test")

        def people(base: str, start: int, stop: int) -> list[Entry]:
            return [
                Entry(f"cn=user{i:05d},{base}", ["top", "person"], {"cn": [f"user{i:05d}"], "sn": [f"S{i}"]})
                for i in range(start, stop)
            ]

        half = entries // 2
        objects.import_entries(inst, corp.id, people("dc=corp,dc=example,dc=com", 0, half), actor="test")
        snap_corp = snapshots.create(inst, corp.id, name="half", actor="test")
        objects.import_entries(
            inst, corp.id, people("dc=corp,dc=example,dc=com", half, entries), actor="test"
        )
        lab_half = min(300, half)
        objects.import_entries(inst, lab.id, people("dc=lab,dc=example,dc=com", 0, lab_half), actor="test")
        snap_lab = snapshots.create(inst, lab.id, name="lab", actor="test")
        objects.import_entries(
            inst, lab.id, people("dc=lab,dc=example,dc=com", lab_half, lab_half + 100), actor="test"
        )
        note = home.config_dir / "templates" / "note.txt"
        note.write_text("t1\n")
        os.chmod(note, 0o600)
        clock.advance(timedelta(minutes=5))
        full = create_backup(inst, kind="manual", actor="test")
        clock.advance(timedelta(minutes=5))
        # State t2: a hundred devices rotate once more through the service, the note changes.
        active = certificates.active_certificate(inst, "agent")
        assert active is not None
        der_active = certs.certificate_from_pem(active.pem)
        for n in range(min(100, devices)):
            blob = _blob(der_active, password_of(seed, n, 4), 4, clock.now())
            passwords.store(
                inst,
                AuthenticatedDevice(ids[n], f"pc-{n:05d}", "agent"),
                ACCOUNT,
                4,
                base64.b64encode(blob).decode(),
            )
        note.write_text("t2\n")
        assert cert_b is not None
        facts = {
            "seed": seed,
            "home": str(home.root),
            "instance_id": inst.id,
            "devices": ids,
            "tokens": tokens,
            "cert_a": cert_a.thumbprint,
            "cert_b": cert_b.thumbprint,
            "corp": corp.id,
            "lab": lab.id,
            "entries": entries,
            "snap_corp": snap_corp.id,
            "snap_corp_entries": half,
            "snap_lab": snap_lab.id,
            "full_backup": str(full.path),
            "rotated_in_t2": min(100, devices),
            "built_at": clock.now().isoformat(),
            "database_url": database_url,
        }
    finally:
        inst.close()
    (root / "facts.json").write_text(json.dumps(facts))
    return facts


def copy_home(facts: dict[str, Any], target: Path) -> Path:
    """A copy of the template home, its catalog's paths moved with it (as when a home is moved:
    otherwise retention in the copy would prune the template's files)."""
    shutil.copytree(facts["home"], target, symlinks=True)
    conn = sqlite3.connect(target / "data" / "ams.db")
    try:
        with conn:
            conn.execute("UPDATE backups SET path = replace(path, ?, ?)", (facts["home"], str(target)))
    finally:
        conn.close()
    return target


def relocate(facts: dict[str, Any], home: Path) -> dict[str, Any]:
    """The facts with the copy's paths."""
    out = dict(facts)
    out["home"] = str(home)
    out["full_backup"] = str(home / Path(facts["full_backup"]).relative_to(facts["home"]))
    return out


# -- the checks after a kill ----------------------------------------------------------------


def integrity(home: Path) -> str:
    conn = sqlite3.connect(f"file:{home / 'data' / 'ams.db'}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def versions(home: Path) -> dict[str, int]:
    """Each device's current version, as the database holds it."""
    conn = sqlite3.connect(f"file:{home / 'data' / 'ams.db'}?mode=ro", uri=True)
    try:
        return {d: int(v) for d, v in conn.execute("SELECT id, current_version FROM devices")}
    finally:
        conn.close()


def state_of(home: Path, facts: dict[str, Any]) -> str:
    """ "t1" (the full backup's), "t2" (the template's), or "mixed"; from every device's
    current version and the config note."""
    held = versions(home)
    rotated = set(facts["devices"][: facts["rotated_in_t2"]])
    t1 = {d: 3 for d in facts["devices"]}
    t2 = {d: (4 if d in rotated else 3) for d in facts["devices"]}
    note_path = home / "config" / "templates" / "note.txt"
    note = note_path.read_text().strip() if note_path.exists() else "absent"
    if held == t1 and note == "t1":
        return "t1"
    if held == t2 and note == "t2":
        return "t2"
    return f"mixed (note {note})"


def check_status(
    forks: ForkServer,
    home: Path,
    facts: dict[str, Any],
    *,
    is_instance: bool,
    audit_events: Any,
    engine: str | None = None,
) -> list[str]:
    """The next `ams status` after a kill: it works (it resolves what the crash left) and tells
    the truth. ``is_instance``: whether ``home`` holds an instance now (a restore into a new
    home may not have got that far: then a clean refusal is the truth); ``audit_events``: a
    function giving the number of audit events the database holds."""
    done = forks.run(["status", "--json", "--home", str(home)])
    if not is_instance:
        if done.returncode == 0 or not done.clean_error():
            return [f"status of a home that is no instance: exit {done.returncode}: {done.stderr[-300:]}"]
        return []
    if done.returncode != 0 or not done.clean_error():
        return [f"ams status failed (exit {done.returncode}): {done.stderr[-300:]}"]
    data = json.loads(done.stdout)
    problems = []
    if data["instance_id"] != facts["instance_id"]:
        problems.append(f"status names instance {data['instance_id']}")
    if data["master_key"]["state"] != "unlocked":
        problems.append(f"status says the master key is {data['master_key']['state']}")
    if data["service"]["running"]:
        problems.append("status says a service runs")
    if engine is not None and data["database"]["engine"] != engine:
        problems.append(f"status says the database is {data['database']['engine']}")
    if data["counts"]["audit_events"] > audit_events():
        problems.append("status counts more audit events than the database holds")
    return problems


def check_passwords(
    home: Path, facts: dict[str, Any], state: str, rng: random.Random, *, lost: bool = False, sample: int = 30
) -> list[str]:
    """A seeded sample of devices (and some of those rotated in t2): every version the state
    holds reads back through the service and decrypts to the password that was stored (with
    ``lost``, those under the first certificate are reported unrecoverable instead)."""
    from ams.clock import SystemClock
    from ams.home import Home
    from ams.instance import open_instance
    from ams.vault import passwords

    problems: list[str] = []
    ids: list[str] = facts["devices"]
    picks = set(rng.sample(range(len(ids)), min(sample, len(ids))))
    picks |= set(rng.sample(range(facts["rotated_in_t2"]), min(5, facts["rotated_in_t2"])))
    instance = open_instance(Home(home), SystemClock())
    try:
        for n in sorted(picks):
            top = 4 if state == "t2" and n < facts["rotated_in_t2"] else 3
            answer = passwords.read(instance, ids[n], "crash-test", history=True)
            entries = [answer["current"], *answer["history"]] if answer.get("current") else answer["history"]
            got = {e["version"]: e.get("password") for e in entries}
            want: dict[int, str | None] = {v: password_of(facts["seed"], n, v) for v in range(1, top + 1)}
            if lost:  # under the first certificate: odd devices' three, even devices' first two
                for v in (1, 2, 3) if n % 2 else (1, 2):
                    want[v] = None
            if got != want:
                problems.append(f"device #{n}: versions {sorted(got)} (passwords differ or absent)")
    finally:
        instance.close()
    return problems


def visible_backups(folder: Path) -> list[Path]:
    """What a person (or a script globbing *.amsbak) takes for backups in a folder."""
    return sorted(p for p in folder.glob("*.amsbak") if not p.name.startswith("."))


def check_catalog(home: Path) -> list[str]:
    """Every catalogued complete backup exists; every visible archive is catalogued."""
    problems: list[str] = []
    conn = sqlite3.connect(f"file:{home / 'data' / 'ams.db'}?mode=ro", uri=True)
    try:
        listed = {
            str(p): s for p, s in conn.execute("SELECT path, status FROM backups WHERE path IS NOT NULL")
        }
        pruned = {
            json.loads(d).get("file")
            for (d,) in conn.execute("SELECT details FROM audit_events WHERE event_id = 1504")
        }
    finally:
        conn.close()
    for path, status in listed.items():
        if status == "complete" and not Path(path).is_file():
            problems.append(f"the catalog lists {Path(path).name} as complete but the file is gone")
    # By name: a copied home's catalog may still name the template's folder (the full backup
    # was taken there), which a restore of it brings back.
    names = {Path(p).name for p in listed} | {Path(str(f)).name for f in pruned if f}
    for path in visible_backups(home / "backups"):
        # A crashed restore's pre-restore backup is complete (it was renamed into place) but
        # only the restored database would have listed it: `backup list --rescan` adds it.
        # A crashed prune recorded its removal before the file went: the next prune removes it.
        if path.name not in names and "-pre-restore-" not in path.name:
            problems.append(f"{path.name} is in backups/ but not in the catalog")
    return problems


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files and work folders of backups, restores, snapshots."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def points(duration: float, count: int, rng: random.Random) -> list[float]:
    """``count`` kill times spread over [0, duration]: one seeded point in each of ``count``
    equal slices, so the whole duration is covered whatever the seed."""
    width = duration / count
    return [width * i + rng.random() * width for i in range(count)]


class KillSchedule:
    """``count`` seeded kill times, one in each of ``count`` equal slices of the operation's
    duration, where the duration is the shortest run seen so far: the measured one, then each
    point the operation finished before its kill (:meth:`finished`). An operation that runs
    faster once its files are cached would otherwise end before the last slices' kills, and
    those points would kill nothing."""

    def __init__(self, duration: float, count: int, rng: random.Random) -> None:
        self.duration = duration
        self.count = count
        self._offsets = [rng.random() for _ in range(count)]

    def __len__(self) -> int:
        return self.count

    def at(self, n: int) -> float:
        return self.duration / self.count * (n + self._offsets[n])

    def finished(self, seconds: float) -> None:
        """The operation ran to its end in ``seconds`` (it was not killed)."""
        self.duration = min(self.duration, seconds)


def utc_now() -> datetime:
    return datetime.now(UTC)


if __name__ == "__main__":
    if sys.argv[1:] == ["--forkserver"]:
        serve_forks()


# -- agents rotating over loopback ----------------------------------------------------------

# Every template password has expired (the agents are told to rotate).
SERVE_OFFSET = {"AMS_CLOCK_OFFSET_SECONDS": str(60 * 86400)}


def serve(forks: ForkServer, home: Path) -> tuple[Running, str]:
    """`ams serve` on ``home`` in a fork server child; its URL once /healthz answers."""
    import httpx

    from server import free_port

    port = free_port()
    running = forks.start(["serve", "--home", str(home), "--port", str(port)], env=SERVE_OFFSET)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return running, url
        except httpx.TransportError:
            time.sleep(0.05)
    running.kill()
    raise AssertionError(f"ams serve did not start: {running.wait().stderr[-500:]}")


def stop(running: Running) -> Outcome:
    """SIGTERM (the orderly stop) and reap."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(running.pid, signal.SIGTERM)
    return running.wait()


@dataclass
class SwarmFigures:
    requests: int = 0
    rotations: int = 0
    failed: int = 0  # answers that were neither a success nor a 503 retried to success
    retried_503: int = 0
    failures: list[str] | None = None

    def fail(self, text: str) -> None:
        self.failed += 1
        if self.failures is None:
            self.failures = []
        if len(self.failures) < 20:
            self.failures.append(text)


async def _agent(
    client: Any,
    device: str,
    token: str,
    version: int,
    rotations: int,
    acked: dict[str, tuple[int, str]],
    figures: SwarmFigures,
    in_flight: set[str],
) -> None:
    """One device: ask, and when told to rotate, encrypt a new password and report it; a 503
    with Retry-After is waited out and asked again."""
    import asyncio

    from ams.crypto import certs, random_secret

    headers = {"Authorization": f"Bearer {token}"}

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        while True:
            figures.requests += 1
            response = await client.request(method, path, headers=headers, **kwargs)
            if response.status_code == 503 and response.headers.get("Retry-After"):
                figures.retried_503 += 1
                await asyncio.sleep(min(1.0, float(response.headers["Retry-After"])))
                continue
            return response

    done = 0
    while done < rotations:
        advice = await call("GET", "/api/v1/agent/password", params={"version": str(version)})
        if advice.status_code != 200:
            figures.fail(f"GET {advice.status_code} {advice.text[:200]}")
            return
        body = advice.json()
        if not body["rotate"]:
            return  # nothing to do (the round is over for this device)
        next_version = int(body["next_version"])
        password = random_secret(15)
        blob = _blob(
            certs.certificate_from_pem(body["certificate"]["pem"]), password, next_version, utc_now()
        )
        in_flight.add(device)
        stored = await call(
            "POST",
            "/api/v1/agent/password",
            json={"account": ACCOUNT, "version": next_version, "blob": base64.b64encode(blob).decode()},
        )
        if stored.status_code != 201:
            figures.fail(f"POST {stored.status_code} {stored.text[:200]}")
            return
        in_flight.discard(device)
        version = next_version
        acked[device] = (version, password)
        figures.rotations += 1
        done += 1


def swarm(
    url: str,
    agents: list[tuple[str, str, int]],
    *,
    rotations: int = 1,
    concurrency: int = 200,
    acked: dict[str, tuple[int, str]] | None = None,
    in_flight: set[str] | None = None,
    stop_after: float | None = None,
) -> SwarmFigures:
    """Run the agents (device id, token, version held) at most ``concurrency`` at a time, each
    rotating up to ``rotations`` times; ``acked`` gets each device's last acknowledged
    version and password. With ``stop_after`` seconds, stop there (the server is killed)."""
    import asyncio

    import httpx

    figures = SwarmFigures()
    acked = {} if acked is None else acked
    in_flight = set() if in_flight is None else in_flight

    async def main() -> None:
        # A connection per request, as ams-agent makes at each check-in (a kept-alive one
        # that the server closes after its idle timeout would fail the next send).
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(device: str, token: str, version: int) -> None:
                async with gate:
                    try:
                        held = acked.get(device, (version, ""))[0]
                        await _agent(client, device, token, held, rotations, acked, figures, in_flight)
                    except httpx.TransportError as exc:
                        if stop_after is None:
                            figures.fail(f"{type(exc).__name__}")

            tasks = [asyncio.ensure_future(one(*agent)) for agent in agents]
            if stop_after is None:
                await asyncio.gather(*tasks)
                return
            await asyncio.wait(tasks, timeout=stop_after)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return figures


def read_back(home: Path, acked: dict[str, tuple[int, str]]) -> list[str]:
    """Each acknowledged password reads back through the service at its version."""
    from ams.clock import SystemClock
    from ams.home import Home
    from ams.instance import open_instance
    from ams.vault import passwords

    lost: list[str] = []
    instance = open_instance(Home(home), SystemClock())
    try:
        for device, (version, password) in sorted(acked.items()):
            answer = passwords.read(instance, device, "crash-test", history=True)
            entries = [answer["current"], *answer["history"]] if answer.get("current") else answer["history"]
            got = {e["version"]: e.get("password") for e in entries}
            if got.get(version) != password:
                lost.append(f"{device} v{version}")
    finally:
        instance.close()
    return lost
