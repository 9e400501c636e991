"""Crash safety on PostgreSQL: the operations that use the database, SIGKILLed at seeded points,
on a real PostgreSQL server (tests/pg.py), each followed by the consistency checks.

The template instance is built once on its own database; each point gets a copy of it
(``CREATE DATABASE … TEMPLATE``, a file-level copy inside the server) and a copy of its home
whose config names that copy. After each kill:

- `ams status` works and tells the truth (this instance, unlocked, no service running);
- the data is consistent: no orphan rows, for the foreign keys the schema declares and for
  the relations it does not (the queries in ``ORPHANS``), one current password per device
  and account, and each device's current version is that password's;
- every password committed before the kill reads back through the service and decrypts
  (a seeded sample of the template's; every acknowledged one for agent rotation);
- the backup catalog lists no partial backup (every complete one exists and verifies, every
  visible archive is catalogued);
- running the interrupted operation again succeeds.

Operations: backup create, backup restore into a new home (onto a new, empty PostgreSQL
database), scheduled retention pruning, certificate mark-lost, agent rotation under load
(`ams serve` killed). Backup restore in place and snapshot create and restore also run on
PostgreSQL, but their crash points are the files' (SQLite's harness covers them:
test_crash_ops.py): on PostgreSQL the restore's database part is one transaction, and a
snapshot's rows change in one transaction each, which the SQLite runs already kill.

`make test` runs ``PG_POINTS`` points per operation (``PG_ROTATION_POINTS`` for agent rotation,
whose points cost two `ams serve` starts each); `--points N` (AMS_FAULT_POINTS) runs N, and
AMS_FAULT_PG_POINTS=N runs N here whatever `--points` says (a long run's PostgreSQL part).
"""

# ruff: noqa: F811 - the fixtures imported from faultfixtures are requested by name below

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crashlib
import figures
import psycopg
import pytest
from faultfixtures import DEFAULT_POINTS, fault_settings, forks  # noqa: F401 - fixtures

from pg import PostgresServer

pytestmark = pytest.mark.postgres

PG_POINTS = 3  # per operation in `make test` (the suite's time budget; more with the flag)
PG_ROTATION_POINTS = 2
# Read at import (collection): the suite's autouse fixture clears every AMS_* variable.
_PG_POINTS_ENV = os.environ.get("AMS_FAULT_PG_POINTS")
DEVICES = 200  # the PostgreSQL template's size (the SQLite one is the big one)
ENTRIES = 300
ROTATING = 30  # agents rotating at once in the rotation-under-load case

# Rows that point at nothing. The first group are the foreign keys the schema declares
# (PostgreSQL enforces them, but a restore copies rows in bulk); the second, relations it
# does not declare, which only the service's transactions keep.
ORPHANS: dict[str, str] = {
    "passwords of no device": (
        "SELECT count(*) FROM device_passwords p WHERE NOT EXISTS "
        "(SELECT 1 FROM devices d WHERE d.id = p.device_id)"
    ),
    "devices of no registration key": (
        "SELECT count(*) FROM devices d WHERE d.registration_key_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM registration_keys k WHERE k.id = d.registration_key_id)"
    ),
    "entries of no directory": (
        "SELECT count(*) FROM directory_objects o WHERE NOT EXISTS "
        "(SELECT 1 FROM directories d WHERE d.id = o.directory_id)"
    ),
    "regions of no directory": (
        "SELECT count(*) FROM directory_regions r WHERE NOT EXISTS "
        "(SELECT 1 FROM directories d WHERE d.id = r.directory_id)"
    ),
    "snapshots of no directory": (
        "SELECT count(*) FROM directory_snapshots s WHERE NOT EXISTS "
        "(SELECT 1 FROM directories d WHERE d.id = s.directory_id)"
    ),
    "restores of no directory": (
        "SELECT count(*) FROM directory_restores r WHERE NOT EXISTS "
        "(SELECT 1 FROM directories d WHERE d.id = r.directory_id)"
    ),
    "console sessions of no user": (
        "SELECT count(*) FROM console_sessions s WHERE NOT EXISTS "
        "(SELECT 1 FROM console_users u WHERE u.id = s.user_id)"
    ),
    # -- not declared ----------------------------------------------------------------------
    "passwords under no certificate": (
        "SELECT count(*) FROM device_passwords p WHERE NOT EXISTS "
        "(SELECT 1 FROM certificates c WHERE c.thumbprint = p.certificate_thumbprint)"
    ),
    "attribute values of no entry": (
        "SELECT count(*) FROM directory_values v WHERE NOT EXISTS "
        "(SELECT 1 FROM directory_objects o WHERE o.id = v.object_id)"
    ),
    "pending restores of no snapshot": (
        "SELECT count(*) FROM directory_restores r WHERE r.state IN ('pending', 'running') "
        "AND NOT EXISTS (SELECT 1 FROM directory_snapshots s WHERE s.id = r.snapshot_id)"
    ),
    "offsite copies of no backup": (
        "SELECT count(*) FROM offsite_copies c WHERE NOT EXISTS "
        "(SELECT 1 FROM backups b WHERE b.id = c.backup_id)"
    ),
    "devices whose current version has no current password": (
        "SELECT count(*) FROM devices d WHERE d.current_version > 0 AND NOT EXISTS "
        "(SELECT 1 FROM device_passwords p WHERE p.device_id = d.id AND p.is_current "
        "AND p.version = d.current_version)"
    ),
    "devices with two current passwords for an account": (
        "SELECT count(*) FROM (SELECT device_id FROM device_passwords WHERE is_current "
        "GROUP BY device_id, account HAVING count(*) > 1) AS twice"
    ),
    "current passwords that are not their device's version": (
        "SELECT count(*) FROM device_passwords p JOIN devices d ON d.id = p.device_id "
        "WHERE p.is_current AND p.version <> d.current_version"
    ),
}

Problems = list[str]


def query(url: str, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of one statement (none for a statement that returns none); committed."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        cursor = conn.execute(text, params)  # type: ignore[arg-type] - the SQL is ours
        return list(cursor.fetchall()) if cursor.description is not None else []


def orphans(url: str) -> Problems:
    return [f"{what}: {n}" for what, text in ORPHANS.items() if (n := query(url, text)[0][0])]


def versions(url: str) -> dict[str, int]:
    return {d: int(v) for d, v in query(url, "SELECT id, current_version FROM devices")}


def state_of(url: str, home: Path, facts: dict[str, Any]) -> str:
    """ "t1" (the full backup's), "t2" (the template's), or "mixed" (crashlib.state_of)."""
    held = versions(url)
    rotated = set(facts["devices"][: facts["rotated_in_t2"]])
    note_path = home / "config" / "templates" / "note.txt"
    note = note_path.read_text().strip() if note_path.exists() else "absent"
    if held == {d: 3 for d in facts["devices"]} and note == "t1":
        return "t1"
    if held == {d: (4 if d in rotated else 3) for d in facts["devices"]} and note == "t2":
        return "t2"
    return f"mixed (note {note})"


# -- the template and its copies ---------------------------------------------------------------


@dataclass
class PgCase:
    work: Path
    facts: dict[str, Any]
    home: Path
    url: str
    target: Path | None = None  # restore into a new home: the new home
    target_url: str | None = None  # and its new database
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def checked(self) -> tuple[Path, str]:
        if self.target is not None:
            assert self.target_url is not None
            return self.target, self.target_url
        return self.home, self.url


@dataclass
class PgTemplate:
    server: PostgresServer
    facts: dict[str, Any]
    database: str  # the template database's name

    def copy(self, work: Path, *, new_home: bool = False) -> PgCase:
        """A copy of the template (database and home) in ``work``."""
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        url = self.server.create_database("ams_fault_point")
        name = url.rsplit("/", 1)[1]
        with self.server.admin_connection() as conn:  # the empty one, replaced by a copy
            conn.execute(f'DROP DATABASE "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.database}" OWNER ams')
        home = work / "home"
        shutil.copytree(self.facts["home"], home, symlinks=True)
        config = home / "config" / "ams.toml"
        config.write_text(config.read_text().replace(self.facts["database_url"], url))
        query(url, "UPDATE backups SET path = replace(path, %s, %s)", (self.facts["home"], str(home)))
        case = PgCase(work, crashlib.relocate(self.facts, home), home, url)
        if new_home:
            case.target = work / "new" / "home"
            case.target.parent.mkdir()
            case.target_url = self.server.create_database("ams_fault_new")
        case.before["backups"] = [p.name for p in crashlib.visible_backups(home / "backups")]
        return case

    def drop(self, case: PgCase) -> None:
        for url in (case.url, case.target_url):
            if url:
                self.server.drop_database(url)


@pytest.fixture(scope="module")
def pg_template(
    pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory, fault_settings: dict[str, int]
) -> Iterator[PgTemplate]:
    from ams.vault import certificates

    url = pg_server.create_database("ams_fault_template")
    root = tmp_path_factory.mktemp("pg-template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certificates, "KEY_SIZE", 2048)
        facts = crashlib.build_template(
            root, devices=DEVICES, entries=ENTRIES, seed=str(fault_settings["seed"]), database_url=url
        )
    try:
        yield PgTemplate(pg_server, facts, url.rsplit("/", 1)[1])
    finally:
        pg_server.drop_database(url)


def _points(fault_settings: dict[str, int], ci: int) -> int:
    """``ci`` in `make test`; the flag's count when one is given; AMS_FAULT_PG_POINTS first."""
    if _PG_POINTS_ENV:
        return int(_PG_POINTS_ENV)
    return ci if fault_settings["points"] == DEFAULT_POINTS else fault_settings["points"]


# -- the checks --------------------------------------------------------------------------------


def _status(forks: crashlib.ForkServer, case: PgCase) -> Problems:
    home, url = case.checked
    is_instance = case.target is None or (home / "config" / "ams.toml").exists()
    return crashlib.check_status(
        forks,
        home,
        case.facts,
        is_instance=is_instance,
        audit_events=lambda: int(query(url, "SELECT count(*) FROM audit_events")[0][0]),
        engine="postgresql",
    )


def _catalog(case: PgCase) -> Problems:
    """No partial backup listed: every complete one exists; every visible archive is listed
    (or a pre-restore one, or one whose pruning was recorded: crashlib.check_catalog)."""
    home, url = case.checked
    listed = dict(query(url, "SELECT path, status FROM backups WHERE path IS NOT NULL"))
    pruned = {
        json.loads(d).get("file") if isinstance(d, str) else d.get("file")
        for (d,) in query(url, "SELECT details FROM audit_events WHERE event_id = 1504")
    }
    problems = [
        f"the catalog lists {Path(p).name} as complete but the file is gone"
        for p, s in listed.items()
        if s == "complete" and not Path(p).is_file()
    ]
    names = {Path(p).name for p in listed} | {Path(str(f)).name for f in pruned if f}
    problems += [
        f"{p.name} is in backups/ but not in the catalog"
        for p in crashlib.visible_backups(home / "backups")
        if p.name not in names and "-pre-restore-" not in p.name
    ]
    problems += [f"left in backups/: {n}" for n in crashlib.leftovers(home / "backups")]
    return problems


def _new_backups_verify(case: PgCase) -> Problems:
    from ams.backup.verify import verify_backup
    from ams.errors import AMSError
    from ams.home import Home
    from ams.instance import open_instance

    home, _ = case.checked
    known = set(case.before["backups"])
    new = [p for p in crashlib.visible_backups(home / "backups") if p.name not in known]
    problems: Problems = []
    if new:
        instance = open_instance(Home(home))
        try:
            for path in new:
                try:
                    verify_backup(path, instance=instance)
                except AMSError as exc:
                    problems.append(f"{path.name} is visible but does not verify: {exc.message}")
        finally:
            instance.close()
    return problems


def _common(case: PgCase, states: tuple[str, ...], rng: random.Random) -> Problems:
    home, url = case.checked
    if case.target is not None and not (home / "config" / "ams.toml").exists():
        return []
    problems = orphans(url)
    state = state_of(url, home, case.facts)
    if state not in states:
        return [*problems, f"the instance is {state}, not one of {states}"]
    problems += crashlib.check_passwords(home, case.facts, state, rng, lost=case.before.get("lost", False))
    problems += _catalog(case)
    problems += [f"left behind in the home: {n}" for n in crashlib.leftovers(home)]
    return problems


@dataclass(frozen=True)
class PgOperation:
    name: str
    what: str
    args: Callable[[PgCase], list[str]]
    check: Callable[[PgCase, random.Random], Problems]
    after_rerun: Callable[[PgCase, crashlib.Outcome], Problems]
    stdin: str | None = None
    func: str | None = None


def _check_backup_create(case: PgCase, rng: random.Random) -> Problems:
    # Killed between the rename and the record, the archive is complete (it verifies) but
    # unrecorded until the next backup into the folder records it (checked after the rerun).
    found = [p for p in _catalog(case) if "but not in the catalog" not in p]
    common = [p for p in _common(case, ("t2",), rng) if "but not in the catalog" not in p]
    return common + found + _new_backups_verify(case)


def _rerun_backup_create(case: PgCase, done: crashlib.Outcome) -> Problems:
    if done.returncode != 0:
        return [f"backup create again: exit {done.returncode}: {done.stderr[-300:]}"]
    return _catalog(case) + _new_backups_verify(case) + orphans(case.url)


def _check_restore(case: PgCase, rng: random.Random) -> Problems:
    problems = _common(case, ("t1",), rng)
    return problems + [f"left beside the new home: {n}" for n in crashlib.leftovers(case.work / "new")]


def _rerun_restore(case: PgCase, done: crashlib.Outcome) -> Problems:
    if done.returncode != 0:
        return [f"restore again: exit {done.returncode}: {done.stderr[-300:]}"]
    home, url = case.checked
    state = state_of(url, home, case.facts)
    return orphans(url) + ([] if state == "t1" else [f"after restoring again the instance is {state}"])


def _check_prune(case: PgCase, rng: random.Random) -> Problems:
    return _common(case, ("t2",), rng)


def _rerun_prune(case: PgCase, done: crashlib.Outcome) -> Problems:
    if done.returncode != 0:
        return [f"prune again: exit {done.returncode}: {done.stderr[-300:]}"]
    left = crashlib.visible_backups(case.home / "backups")
    extra = [] if len(left) == 1 else [f"after pruning again {len(left)} backups remain, not the newest one"]
    return _catalog(case) + extra


def _lost_state(case: PgCase) -> tuple[str, int, int]:
    [(state,)] = query(
        case.url, "SELECT state FROM certificates WHERE thumbprint = %s", (case.facts["cert_a"],)
    )
    [(under, expired)] = query(
        case.url,
        "SELECT count(*), count(*) FILTER (WHERE expires_at <= now()) FROM device_passwords "
        "WHERE is_current AND certificate_thumbprint = %s",
        (case.facts["cert_a"],),
    )
    return str(state), int(under), int(expired)


def _check_lost(case: PgCase, rng: random.Random) -> Problems:
    state, under, expired = _lost_state(case)
    case.before["lost"] = state == "lost"
    problems = _common(case, ("t2",), rng)
    if state == "lost" and expired != under:
        problems.append(f"certificate lost but only {expired} of {under} passwords under it expired")
    if state != "lost" and expired:
        problems.append(f"certificate not lost but {expired} passwords under it expired")
    return problems


def _rerun_lost(case: PgCase, done: crashlib.Outcome) -> Problems:
    if case.before.get("lost"):
        ok = done.returncode != 0 and done.clean_error() and "already marked lost" in done.stderr
        return (
            []
            if ok
            else [f"certs lost again after it completed: exit {done.returncode}: {done.stderr[-200:]}"]
        )
    if done.returncode != 0:
        return [f"certs lost again: exit {done.returncode}: {done.stderr[-300:]}"]
    state, under, expired = _lost_state(case)
    return [] if state == "lost" and under == expired else [f"after lost again: {state}, {expired}/{under}"]


OPERATIONS = [
    PgOperation(
        "backup-create",
        "backup create",
        lambda c: ["backup", "create"],
        _check_backup_create,
        _rerun_backup_create,
    ),
    PgOperation(
        "restore-new-home",
        "backup restore into a new home (a new PostgreSQL database)",
        lambda c: [
            "backup",
            "restore",
            c.facts["full_backup"],
            "--password-stdin",
            "--yes",
            "--database-url",
            str(c.target_url),
        ],  # fmt: skip
        _check_restore,
        _rerun_restore,
        stdin=crashlib.RECOVERY + "\n",
    ),
    PgOperation(
        "retention-prune",
        "scheduled retention pruning",
        lambda c: [str(c.home), "30"],
        _check_prune,
        _rerun_prune,
        func="drive_prune",
    ),
    PgOperation(
        "certs-lost",
        "certificate mark-lost (mass expiry)",
        lambda c: ["certs", "lost", c.facts["cert_a"]],
        _check_lost,
        _rerun_lost,
    ),
]


def _start(forks: crashlib.ForkServer, op: PgOperation, case: PgCase) -> crashlib.Running:
    if op.func is not None:
        return forks.start(func=op.func, func_args=op.args(case))
    return forks.start([*op.args(case), "--home", str(case.checked[0])], stdin=op.stdin)


@pytest.mark.parametrize("op", OPERATIONS, ids=[o.name for o in OPERATIONS])
def test_crash_points_postgres(
    op: PgOperation,
    pg_template: PgTemplate,
    forks: crashlib.ForkServer,
    fault_settings: dict[str, int],
    tmp_path: Path,
) -> None:
    count, seed = _points(fault_settings, PG_POINTS), fault_settings["seed"]
    rng = random.Random(f"{seed}/pg/{op.name}")
    new_home = op.name == "restore-new-home"
    case = pg_template.copy(tmp_path / "measure", new_home=new_home)
    whole = _start(forks, op, case).wait()
    pg_template.drop(case)
    assert whole.returncode == 0, whole.stderr
    failures: list[str] = []
    killed = 0
    schedule = crashlib.KillSchedule(whole.seconds, count, rng)
    for n in range(count):
        at = schedule.at(n)
        case = pg_template.copy(tmp_path / "point", new_home=new_home)
        try:
            outcome = crashlib.kill_at(_start(forks, op, case), at)
            killed += outcome.killed
            if not outcome.killed:
                schedule.finished(outcome.seconds)
            problems: Problems = []
            if not outcome.killed and outcome.returncode != 0:
                problems.append(f"ended by itself with exit {outcome.returncode}: {outcome.stderr[-300:]}")
            problems += _status(forks, case)
            problems += op.check(case, rng)
            problems += op.after_rerun(case, _start(forks, op, case).wait())
        finally:
            pg_template.drop(case)
        failures += [f"point {n} ({at:.3f}s of {schedule.duration:.3f}s): {p}" for p in problems]
    outcome_text = f"{killed} killed mid-way (the rest had finished); " + (
        "data consistent, every check passed" if not failures else f"{len(failures)} failed checks"
    )
    figures.record("crash (PostgreSQL)", op.what, count, outcome_text, seed)
    assert not failures, "\n".join(failures[:40])


def test_crash_points_rotation_under_load_postgres(
    pg_template: PgTemplate, forks: crashlib.ForkServer, fault_settings: dict[str, int], tmp_path: Path
) -> None:
    count, seed = _points(fault_settings, PG_ROTATION_POINTS), fault_settings["seed"]
    rng = random.Random(f"{seed}/pg/rotation")
    facts = pg_template.facts
    agents = [(facts["devices"][n], facts["tokens"][n], 3) for n in range(100, 100 + ROTATING)]

    case = pg_template.copy(tmp_path / "measure")
    try:
        server, url = crashlib.serve(forks, case.home)
        began = time.monotonic()
        whole = crashlib.swarm(url, agents, concurrency=30)
        duration = time.monotonic() - began
        crashlib.stop(server)
    finally:
        pg_template.drop(case)
    assert whole.failed == 0 and whole.rotations == ROTATING, whole.failures
    failures: list[str] = []
    acked_total = 0
    for n, at in enumerate(crashlib.points(duration, count, rng)):
        case = pg_template.copy(tmp_path / "point")
        try:
            server, url = crashlib.serve(forks, case.home)
            acked: dict[str, tuple[int, str]] = {}
            killer = threading.Timer(at, server.kill)
            killer.start()
            crashlib.swarm(url, agents, concurrency=30, acked=acked, stop_after=at + 0.5)
            killer.join()
            server.wait()
            acked_total += len(acked)
            problems = _status(forks, case) + orphans(case.url)
            problems += [f"acknowledged, then lost: {d}" for d in crashlib.read_back(case.home, acked)]
            server, url = crashlib.serve(forks, case.home)
            again = crashlib.swarm(url, agents, concurrency=30, acked=acked)
            crashlib.stop(server)
            if again.failed or len(acked) != ROTATING:
                problems.append(f"rotating again: {again.failed} failed, {len(acked)} of {ROTATING} rotated")
            problems += orphans(case.url)
            problems += [f"lost after rotating again: {d}" for d in crashlib.read_back(case.home, acked)]
        finally:
            pg_template.drop(case)
        failures += [f"point {n} ({at:.3f}s of {duration:.3f}s): {p}" for p in problems]
    outcome = f"{acked_total} rotations acknowledged before the kills, all read back; " + (
        "data consistent, every check passed" if not failures else f"{len(failures)} failed checks"
    )
    figures.record(
        "crash (PostgreSQL)",
        f"agent rotation under load ({ROTATING} agents; ams serve killed)",
        count,
        outcome,
        seed,
    )
    assert not failures, "\n".join(failures[:40])


def test_the_consistency_queries_find_what_they_look_for(pg_template: PgTemplate, tmp_path: Path) -> None:
    """The checks above could fail: break two undeclared relations in a copy, and they are named."""
    case = pg_template.copy(tmp_path / "broken")
    try:
        assert orphans(case.url) == []
        device = case.facts["devices"][0]
        query(case.url, "UPDATE devices SET current_version = 9 WHERE id = %s", (device,))
        query(
            case.url,
            "UPDATE device_passwords SET certificate_thumbprint = 'gone' "
            "WHERE device_id = %s AND version = 1",
            (device,),
        )
        found = orphans(case.url)
        assert "passwords under no certificate: 1" in found
        assert "devices whose current version has no current password: 1" in found
        assert "current passwords that are not their device's version: 1" in found
    finally:
        pg_template.drop(case)
