"""Snapshots and restores: limits, the 180-day rule, asynchronous and crash-safe restores,
consistency under writes, checksums, replicas, the daily automatic snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from ams import apikeys
from ams.api import create_app
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.db.models.directory import DirectoryObject, DirectoryRestore, Snapshot
from ams.directory import directories, objects, restore, snapfile, snapshots
from ams.directory.background import DirectoryJobs
from ams.directory.entry import Entry
from ams.errors import (
    DirectoryUnavailable,
    NotPrimaryRegion,
    SnapshotCorrupt,
    SnapshotLimitExceeded,
    SnapshotTooOld,
    UnsupportedOperation,
)
from ams.home import Home
from ams.instance import Instance, open_instance

BASE = "dc=corp,dc=example,dc=com"


def make(instance: Instance, **kwargs: object) -> str:
    args: dict[str, object] = {"dns_name": "corp.example.com", "short_name": "CORP", "actor": "test"}
    args.update(kwargs)
    return directories.create(instance, **args).id  # type: ignore[arg-type]


def people(n: int, prefix: str = "user") -> list[Entry]:
    return [Entry(BASE, ["top", "domain"], {"dc": ["corp"]})] + [
        Entry(f"cn={prefix}{i},{BASE}", ["person"], {"cn": [f"{prefix}{i}"], "sn": [str(i)]})
        for i in range(n)
    ]


def dns(instance: Instance, directory_id: str, region: str | None = None) -> list[str]:
    return [e.dn for e in objects.list_entries(instance, directory_id, region=region, limit=10000)]


def generations(instance: Instance, directory_id: str) -> set[int]:
    with instance.session() as session:
        return set(
            session.scalars(
                select(DirectoryObject.generation)
                .where(DirectoryObject.directory_id == directory_id)
                .distinct()
            ).all()
        )


def test_five_manual_snapshots_then_limit(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(3), actor="t")
    taken = [snapshots.create(instance, d, name=f"n{i}", actor="t") for i in range(5)]
    assert all(s.status == "Completed" and s.checksum_ok for s in taken)
    assert all(s.id.startswith("s-") and len(s.id) == 12 for s in taken)
    assert snapshots.limits(instance, d).to_dict() == {
        "manual_limit": 5,
        "manual_count": 5,
        "manual_limit_reached": True,
        "snapshots_supported": True,
        "unsupported_reason": None,
    }
    with pytest.raises(SnapshotLimitExceeded, match="delete one"):
        snapshots.create(instance, d, actor="t")
    # The refused one left nothing behind: no row, no file.
    assert len(snapshots.list_snapshots(instance, d)) == 5
    assert len(list((instance.home.snapshots_dir / d).iterdir())) == 5
    # Automatic snapshots do not count.
    snapshots.create_auto(instance, d)
    assert snapshots.limits(instance, d).manual_count == 5
    snapshots.delete(instance, taken[0].id, actor="t")
    assert snapshots.create(instance, d, actor="t").status == "Completed"


def test_ad_connector_has_no_snapshots(instance: Instance) -> None:
    d = make(instance, type="ADConnector", size="Small")
    with pytest.raises(UnsupportedOperation, match="AD Connector"):
        snapshots.create(instance, d, actor="t")
    assert snapshots.list_snapshots(instance, d) == []


def test_snapshot_operations_only_in_the_primary_region(instance: Instance) -> None:
    d = make(instance, edition="Enterprise", additional_regions=["eu-west-1"])
    with pytest.raises(NotPrimaryRegion, match="us-east-1"):
        snapshots.create(instance, d, region="eu-west-1", actor="t")
    s = snapshots.create(instance, d, region="us-east-1", actor="t")
    with pytest.raises(NotPrimaryRegion):
        snapshots.restore(instance, s.id, region="eu-west-1", actor="t")
    with pytest.raises(NotPrimaryRegion):
        snapshots.delete(instance, s.id, region="eu-west-1", actor="t")
    assert directories.get(instance, d).stage == "Active"


def test_180_day_rule_with_the_moved_clock(instance: Instance, clock: ManualClock) -> None:
    d = make(instance)
    s = snapshots.create(instance, d, actor="t")
    clock.advance(timedelta(days=180))
    snapshots.restore(instance, s.id, actor="t")  # 180 days exactly: still allowed
    restore.run_pending(instance)
    clock.advance(timedelta(seconds=1))
    with pytest.raises(SnapshotTooOld, match="older than 180 days"):
        snapshots.restore(instance, s.id, actor="t")
    assert directories.get(instance, d).stage == "Active"


def test_restore_is_asynchronous_and_brings_back_the_snapshot(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(20), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    objects.delete(instance, d, f"cn=user0,{BASE}", actor="t")

    started = snapshots.restore(instance, s.id, actor="t")
    assert started.stage == "Restoring"
    with pytest.raises(DirectoryUnavailable, match=f"directory {d} is restoring"):
        objects.list_entries(instance, d)
    with pytest.raises(DirectoryUnavailable):
        objects.add(instance, d, Entry(f"cn=x,{BASE}", ["person"], {}), actor="t")
    with pytest.raises(DirectoryUnavailable):
        snapshots.restore(instance, s.id, actor="t")
    with pytest.raises(DirectoryUnavailable):
        directories.delete(instance, d, actor="t")

    [result] = restore.run_pending(instance)
    assert result.state == "done" and result.entries == 21
    info = directories.get(instance, d)
    assert info.stage == "Active" and info.entry_count == 21
    names = dns(instance, d)
    assert f"cn=later,{BASE}" not in names  # changes after the snapshot are gone
    assert f"cn=user0,{BASE}" in names
    assert generations(instance, d) == {info.generation}  # the old rows were removed


def test_injected_failure_leaves_restore_failed_and_data_unchanged(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(10), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    before = [e.to_dict() for e in objects.list_entries(instance, d)]
    snapshots.restore(instance, s.id, actor="t")

    def boom(stage: str, _count: int) -> None:
        if stage == "loaded":
            raise OSError("disk failure injected by the test")

    [result] = restore.run_pending(instance, hook=boom)
    assert result.state == "failed"
    info = directories.get(instance, d)
    assert info.stage == "RestoreFailed"
    assert "disk failure injected" in (info.stage_reason or "")
    assert "entries are as before" in (info.stage_reason or "")
    assert [e.to_dict() for e in objects.list_entries(instance, d)] == before
    assert generations(instance, d) == {info.generation}  # nothing staged left behind
    # A later restore works.
    snapshots.restore(instance, s.id, actor="t")
    assert restore.run_pending(instance)[0].state == "done"
    assert directories.get(instance, d).stage == "Active"


def test_file_corrupted_after_the_request_fails_the_restore(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(5), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    snapshots.restore(instance, s.id, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    data = bytearray(path.read_bytes())
    data[60] ^= 0x01
    path.write_bytes(bytes(data))
    [result] = restore.run_pending(instance)
    assert result.state == "failed" and "checksum" in (result.reason or "")
    assert directories.get(instance, d).stage == "RestoreFailed"
    assert f"cn=later,{BASE}" in dns(instance, d)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data.replace(b"user7", b"userX"), "fails its checksum"),  # still parses
        (lambda data: data.replace(b'["dc=corp', b"[\x00dc=corp", 1), "fails its checksum"),  # does not parse
        (lambda data: data[: len(data) // 2], "checksum trailer"),
        (lambda data: data[:-75] + b"#END 3\n" + data[-73:], "fails its checksum"),
    ],
)
def test_the_worker_checks_the_file_as_it_loads(
    instance: Instance, monkeypatch: pytest.MonkeyPatch, damage: Any, reason: str
) -> None:
    """Damaged after the request: the worker, which checks the file in the pass that loads
    it, fails before the switch and leaves the data as it was."""
    monkeypatch.setattr(restore, "_BATCH", 4)  # batches are staged before the end is read
    d = make(instance)
    objects.import_entries(instance, d, people(20), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    before = dns(instance, d)
    snapshots.restore(instance, s.id, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    path.write_bytes(damage(path.read_bytes()))
    [result] = restore.run_pending(instance)
    assert result.state == "failed" and reason in (result.reason or "")
    info = directories.get(instance, d)
    assert info.stage == "RestoreFailed"
    assert dns(instance, d) == before
    assert generations(instance, d) == {info.generation}


def test_corrupt_snapshot_is_reported_and_refused(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(5), actor="t")
    s = snapshots.create(instance, d, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    text = path.read_bytes().replace(b"user3", b"userX")
    path.write_bytes(text)
    [listed] = snapshots.list_snapshots(instance, d)
    assert listed.checksum_ok is False
    with pytest.raises(SnapshotCorrupt, match="fails its checksum"):
        snapshots.restore(instance, s.id, actor="t")
    assert directories.get(instance, d).stage == "Active"
    # A truncated file, and one replaced by another whole snapshot file, are refused too.
    other = snapshots.create(instance, d, actor="t")
    other_path = instance.home.snapshots_dir / d / f"{other.id}.snap"
    path.write_bytes(other_path.read_bytes())
    with pytest.raises(SnapshotCorrupt, match="not the file this snapshot wrote"):
        snapshots.restore(instance, s.id, actor="t")
    other_path.write_bytes(other_path.read_bytes()[:-30])
    with pytest.raises(SnapshotCorrupt):
        snapshots.restore(instance, other.id, actor="t")


def test_scrub_finds_damage_that_left_size_and_time_alone(instance: Instance, clock: ManualClock) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(5), actor="t")
    s = snapshots.create(instance, d, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    assert snapshots.scrub(instance) == []  # read whole: it passes
    times = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes().replace(b"user3", b"userX"))  # a failing disk, say
    os.utime(path, ns=(times, times))
    assert snapshots.get(instance, s.id).checksum_ok is True  # listing trusts size and time
    clock.advance(timedelta(hours=1))
    assert snapshots.scrub(instance) == []  # read an hour ago: not yet again
    clock.advance(snapshots.SCRUB_INTERVAL)
    [damaged] = snapshots.scrub(instance)
    assert damaged.id == s.id and damaged.checksum_ok is False
    assert snapshots.get(instance, s.id).checksum_ok is False
    with pytest.raises(SnapshotCorrupt, match="fails its checksum"):
        snapshots.restore(instance, s.id, actor="t")


def test_the_service_jobs_scrub_and_warn(
    instance: Instance, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d = make(instance, type="ADConnector")  # no automatic snapshots
    bad = snapshots.SnapshotInfo(
        id="s-0123456789", directory_id=d, type="Manual", name=None, status="Completed",
        start_time=instance.clock.now(), checksum_ok=False,
    )  # fmt: skip
    monkeypatch.setattr(snapshots, "scrub", lambda _instance: [bad])
    with caplog.at_level("WARNING", logger="ams.directory"):
        DirectoryJobs(instance).tick()
    assert f"snapshot s-0123456789 of {d} fails its checksum" in caplog.text


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing catches it, nothing cleans up."""


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "_BATCH", 4)


@pytest.mark.usefixtures("small_batches")
def test_crash_while_loading_then_next_open_finishes(
    home: Home, instance: Instance, clock: ManualClock
) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(20), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    snapshots.restore(instance, s.id, actor="t")

    def crash(stage: str, count: int) -> None:
        if stage == "loaded" and count >= 8:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        restore.run_pending(instance, hook=crash)
    # Half loaded: the journal says so, the staged rows are there, the live ones untouched.
    with instance.session() as session:
        journal = session.scalars(select(DirectoryRestore)).one()
        assert journal.state == "loading"
        staged = session.scalar(
            select(func.count())
            .select_from(DirectoryObject)
            .where(DirectoryObject.generation == journal.target_generation)
        )
        assert staged == 8
    assert directories.get(instance, d).stage == "Restoring"
    instance.close()

    reopened = open_instance(home, clock)
    try:
        [result] = restore.run_pending(reopened)
        assert result.state == "done"
        info = directories.get(reopened, d)
        assert info.stage == "Active" and info.entry_count == 21
        assert f"cn=later,{BASE}" not in dns(reopened, d)
        assert generations(reopened, d) == {info.generation}
        with reopened.session() as session:
            assert session.scalars(select(DirectoryRestore.attempts)).one() == 2
    finally:
        reopened.close()


@pytest.mark.usefixtures("small_batches")
def test_crash_while_loading_and_snapshot_gone_rolls_back(
    home: Home, instance: Instance, clock: ManualClock
) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(20), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    before = dns(instance, d)
    snapshots.restore(instance, s.id, actor="t")

    def crash(stage: str, count: int) -> None:
        if stage == "loaded":
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        restore.run_pending(instance, hook=crash)
    (instance.home.snapshots_dir / d / f"{s.id}.snap").unlink()  # lost while the process was down
    instance.close()
    reopened = open_instance(home, clock)
    try:
        [result] = restore.run_pending(reopened)
        assert result.state == "failed"
        info = directories.get(reopened, d)
        assert info.stage == "RestoreFailed"
        assert dns(reopened, d) == before
        assert generations(reopened, d) == {info.generation}
    finally:
        reopened.close()


def test_crash_after_the_switch_then_next_open_converges(
    home: Home, instance: Instance, clock: ManualClock
) -> None:
    d = make(instance, edition="Enterprise", additional_regions=["eu-west-1"])
    objects.import_entries(instance, d, people(6), actor="t")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    snapshots.restore(instance, s.id, actor="t")

    def crash(stage: str, _count: int) -> None:
        if stage == "switched":
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        restore.run_pending(instance, hook=crash)
    info = directories.get(instance, d)
    assert info.stage == "Active"  # the switch committed: the snapshot's data is live
    assert f"cn=later,{BASE}" not in dns(instance, d)
    replica = next(r for r in info.regions if r.region == "eu-west-1")
    assert replica.status == "Updating" and not replica.in_sync
    assert f"cn=later,{BASE}" in dns(instance, d, region="eu-west-1")  # still the old data there
    instance.close()
    reopened = open_instance(home, clock)
    try:
        [result] = restore.run_pending(reopened)
        assert result.state == "done" and result.entries == 7
        info = directories.get(reopened, d)
        assert all(r.in_sync and r.status == "Active" for r in info.regions)
        assert dns(reopened, d, region="eu-west-1") == dns(reopened, d)
        assert generations(reopened, d) == {info.generation}
    finally:
        reopened.close()


def test_replicas_converge_after_restore(instance: Instance) -> None:
    d = make(instance, edition="Enterprise", additional_regions=["eu-west-1", "ap-south-1"])
    objects.import_entries(instance, d, people(4), actor="t")
    # Replicas hold the same entries as the primary.
    assert dns(instance, d, region="eu-west-1") == dns(instance, d) == dns(instance, d, region="ap-south-1")
    s = snapshots.create(instance, d, actor="t")
    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    assert f"cn=later,{BASE}" in dns(instance, d, region="ap-south-1")
    snapshots.restore(instance, s.id, actor="t")
    seen: list[list[tuple[str, str, bool]]] = []

    def watch(stage: str, _count: int) -> None:
        if stage == "switched":
            seen.append([(r.region, r.status, r.in_sync) for r in directories.get(instance, d).regions])

    restore.run_pending(instance, hook=watch)
    assert seen == [
        [("us-east-1", "Active", True), ("ap-south-1", "Updating", False), ("eu-west-1", "Updating", False)]
    ]
    info = directories.get(instance, d)
    assert [(r.region, r.status, r.in_sync) for r in info.regions] == [
        ("us-east-1", "Active", True),
        ("ap-south-1", "Active", True),
        ("eu-west-1", "Active", True),
    ]
    for region in ("eu-west-1", "ap-south-1"):
        assert dns(instance, d, region=region) == dns(instance, d)
        assert f"cn=later,{BASE}" not in dns(instance, d, region=region)


def test_snapshot_under_concurrent_writes_is_one_point_in_time(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer adds entries in pairs (one transaction each pair) while snapshots are taken:
    every snapshot holds whole pairs only, and a gap-free prefix of them. Small blocks, so
    each snapshot reads its entries in many statements, which the writer goes between."""
    monkeypatch.setattr(snapshots, "_BLOCK_ENTRIES", 7)
    d = make(instance)
    objects.add(instance, d, Entry(BASE, ["domain"], {"dc": ["corp"]}), actor="t")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            pair = [
                Entry(f"cn=a{i},{BASE}", ["person"], {"cn": [f"a{i}"]}),
                Entry(f"cn=b{i},{BASE}", ["person"], {"cn": [f"b{i}"]}),
            ]
            objects.import_entries(instance, d, pair, actor="writer")
            i += 1
            written[0] = i

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        taken = []
        while len(taken) < 4:
            if written[0] >= 20 * (len(taken) + 1):
                taken.append(snapshots.create(instance, d, actor="t"))
    finally:
        stop.set()
        thread.join()
    counts = []
    for s in taken:
        path = instance.home.snapshots_dir / d / f"{s.id}.snap"
        snapfile.verify(path, s.sha256)
        _header, rows = snapfile.read_entries(path)
        names = [dn.split(",")[0][3:] for dn, *_ in rows][1:]
        a = {int(n[1:]) for n in names if n.startswith("a")}
        b = {int(n[1:]) for n in names if n.startswith("b")}
        assert a == b, "a snapshot caught half of a transaction"
        assert a == set(range(len(a))), "a snapshot has a gap"
        assert s.entries == 1 + 2 * len(a)
        counts.append(len(a))
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_snapshot_while_every_entry_changes_in_one_transaction(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer rewrites every entry in each of its transactions while snapshots are taken
    (in blocks of 7 entries, so many statements): each snapshot holds one version of all."""
    monkeypatch.setattr(snapshots, "_BLOCK_ENTRIES", 7)
    d = make(instance)
    objects.import_entries(instance, d, people(60), actor="t")
    stop = threading.Event()
    commits = [0]

    def writer() -> None:
        while not stop.is_set():
            commits[0] += 1
            with instance.transaction() as session:
                session.execute(
                    update(DirectoryObject)
                    .where(DirectoryObject.directory_id == d)
                    .values(attributes=json.dumps({"v": [str(commits[0])]}))
                )

    thread = threading.Thread(target=writer)
    thread.start()
    versions = []
    try:
        for _ in range(12):
            seen = commits[0]
            while commits[0] == seen:  # at least one commit between two snapshots
                threading.Event().wait(0.001)
            s = snapshots.create(instance, d, actor="t")
            _header, rows = snapfile.read_entries(instance.home.snapshots_dir / d / f"{s.id}.snap")
            found = {attributes for *_, attributes in rows}
            assert len(found) == 1, "a snapshot mixes two transactions"
            versions.append(found.pop())
            snapshots.delete(instance, s.id, actor="t")
    finally:
        stop.set()
        thread.join()
    assert len(set(versions)) > 1  # the writer did change the entries meanwhile


def test_daily_automatic_snapshots_keep_five(instance: Instance, clock: ManualClock) -> None:
    d = make(instance)
    connector = make(instance, dns_name="conn.example.com", type="ADConnector")
    jobs = DirectoryJobs(instance, auto_check=timedelta(minutes=5))
    jobs.tick()
    jobs.tick()  # the same moment: nothing new
    assert [s.type for s in snapshots.list_snapshots(instance, d)] == ["Auto"]
    for _ in range(7):
        clock.advance(timedelta(days=1))
        jobs.tick()
    autos = snapshots.list_snapshots(instance, d)
    assert len(autos) == 5 and all(s.type == "Auto" and s.status == "Completed" for s in autos)
    assert autos[0].start_time == clock.now()
    assert len(list((instance.home.snapshots_dir / d).iterdir())) == 5
    assert snapshots.limits(instance, d).manual_count == 0
    assert snapshots.list_snapshots(instance, connector) == []


def test_jobs_thread_runs_restores_and_stops(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(3), actor="t")
    s = snapshots.create(instance, d, actor="t")
    jobs = DirectoryJobs(instance, poll=60)
    jobs.start()
    try:
        snapshots.restore(instance, s.id, actor="t")  # notify() wakes the thread at once
        for _ in range(200):
            if directories.get(instance, d).stage == "Active":
                break
            threading.Event().wait(0.05)
        assert directories.get(instance, d).stage == "Active"
    finally:
        jobs.stop()
    assert jobs._thread is None


# The REST API.


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    yield TestClient(create_app(instance))  # no lifespan: the test runs the jobs itself


@pytest.fixture
def admin(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'admin', Role.ADMIN, 'test').token}"}


def test_rest_snapshots_and_restore(client: TestClient, instance: Instance, admin: dict) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(3), actor="t")
    made = client.post(f"/api/v1/directories/{d}/snapshots", json={"name": "before"}, headers=admin)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert made.json()["status"] == "Completed"
    for _ in range(4):
        assert client.post(f"/api/v1/directories/{d}/snapshots", headers=admin).status_code == 201
    sixth = client.post(f"/api/v1/directories/{d}/snapshots", headers=admin)
    assert sixth.status_code == 409 and sixth.json()["error"] == "snapshot_limit_exceeded"
    limits = client.get(f"/api/v1/directories/{d}/snapshots/limits", headers=admin).json()
    assert limits == {
        "manual_limit": 5,
        "manual_count": 5,
        "manual_limit_reached": True,
        "snapshots_supported": True,
        "unsupported_reason": None,
    }
    assert len(client.get("/api/v1/snapshots", headers=admin).json()) == 5
    assert client.get(f"/api/v1/snapshots/{sid}", headers=admin).json()["checksum_ok"] is True

    objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    started = client.post(f"/api/v1/snapshots/{sid}/restore", headers=admin)
    assert started.status_code == 202 and started.json()["stage"] == "Restoring"
    offline = client.get(f"/api/v1/directories/{d}/objects", headers=admin)
    assert offline.status_code == 503
    assert offline.json() == {
        "error": "directory_unavailable",
        "message": offline.json()["message"],
    }
    assert f"directory {d} is restoring" in offline.json()["message"]
    write = client.post(
        f"/api/v1/directories/{d}/objects",
        json={"dn": f"cn=x,{BASE}", "object_classes": ["person"]},
        headers=admin,
    )
    assert write.status_code == 503
    assert client.get(f"/api/v1/directories/{d}", headers=admin).json()["stage"] == "Restoring"

    DirectoryJobs(instance).tick()
    assert client.get(f"/api/v1/directories/{d}", headers=admin).json()["stage"] == "Active"
    listed = client.get(f"/api/v1/directories/{d}/objects", headers=admin).json()
    assert f"cn=later,{BASE}" not in [e["dn"] for e in listed] and len(listed) == 4
    assert client.delete(f"/api/v1/snapshots/{sid}", headers=admin).status_code == 200
    assert client.get(f"/api/v1/snapshots/{sid}", headers=admin).status_code == 404


def test_snapshot_file_format(instance: Instance) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(2), actor="t")
    s = snapshots.create(instance, d, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    assert path.stat().st_mode & 0o777 == 0o600
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"AMS-DIRECTORY-SNAPSHOT 2"
    header = json.loads(lines[1])
    assert header["directory_id"] == d and header["snapshot_id"] == s.id
    body = b"\n".join(lines[3:11]) + b"\n"  # 2 DN columns, 3 lines of classes, 3 of attributes
    assert lines[2] == b"#BLOCK 3 %d" % len(body)
    names = [BASE, f"cn=user0,{BASE}", f"cn=user1,{BASE}"]
    assert json.loads(lines[3]) == names
    assert json.loads(lines[4]) == names
    assert [json.loads(x) for x in lines[5:8]] == [["top", "domain"], ["person"], ["person"]]
    assert [json.loads(x) for x in lines[8:11]] == [
        {"dc": ["corp"]},
        {"cn": ["user0"], "sn": ["0"]},
        {"cn": ["user1"], "sn": ["1"]},
    ]
    assert lines[-3] == b"#END 3"
    assert lines[-2] == b"#SHA256 " + s.sha256.encode()  # type: ignore[union-attr]
    assert not [p for p in Path(path.parent).iterdir() if p.name.startswith(".")]  # no temp files
    # The file's time is the moment the snapshot completed, as recorded.
    assert s.completed_at is not None
    assert path.stat().st_mtime_ns == int(s.completed_at.timestamp() * 1_000_000) * 1000


def test_awkward_values_survive_a_snapshot_and_restore(instance: Instance) -> None:
    """Quotes, backslashes, line feeds and TABs in DNs and values, non-ASCII text, binary
    values, and more entries than one block holds."""
    d = make(instance)
    entries = people(12000)
    entries += [
        Entry(
            f'cn=Zoë "Q" \\, a\tb\nc {i},{BASE}',
            ["person"],
            {"cn": [f"Zoë\n{i}"], "photo": [b"\xff\x00\t\n"]},
        )
        for i in range(3)
    ]
    objects.import_entries(instance, d, entries, actor="t")
    before = [e.to_dict() for e in objects.list_entries(instance, d, limit=10000, offset=5000)]
    s = snapshots.create(instance, d, actor="t")
    assert s.entries == 12004
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    assert path.read_bytes().count(b"\n#BLOCK ") >= 2
    objects.delete(instance, d, f"cn=user7,{BASE}", actor="t")
    snapshots.restore(instance, s.id, actor="t")
    assert restore.run_pending(instance)[0].state == "done"
    assert [e.to_dict() for e in objects.list_entries(instance, d, limit=10000, offset=5000)] == before
    got = objects.get(instance, d, entries[-1].dn)
    assert got.attributes == {"cn": ["Zoë\n2"], "photo": [b"\xff\x00\t\n"]}


def _as_format_1(path: Path) -> None:
    """Rewrite a snapshot file in format 1 (one TAB-separated line per entry), as AMS wrote it
    before format 2."""
    header, rows = snapfile.read_entries(path)
    lines = [b"AMS-DIRECTORY-SNAPSHOT 1\n", json.dumps(header, sort_keys=True).encode() + b"\n"]
    count = 0
    for dn, norm, classes, attributes in rows:
        quoted = [json.dumps(dn, ensure_ascii=False), json.dumps(norm, ensure_ascii=False)]
        lines.append("\t".join([*quoted, classes, attributes]).encode() + b"\n")
        count += 1
    lines.append(b"#END %d\n" % count)
    data = b"".join(lines)
    path.write_bytes(data + b"#SHA256 " + hashlib.sha256(data).hexdigest().encode() + b"\n")


def test_a_format_1_snapshot_still_restores(instance: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapfile, "_LEGACY_BATCH", 4)  # 9 entries: batches of 4, 4 and 1
    d = make(instance)
    objects.import_entries(instance, d, people(7), actor="t")
    objects.add(instance, d, Entry(f'cn=Zoë "Q",{BASE}', ["person"], {"cn": ["Zoë"]}), actor="t")
    before = [e.to_dict() for e in objects.list_entries(instance, d)]
    s = snapshots.create(instance, d, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    _as_format_1(path)
    with instance.transaction() as session:
        row = session.get(Snapshot, s.id)
        assert row is not None
        row.sha256 = snapfile.verify(path, None)
        row.size = path.stat().st_size
    assert snapshots.get(instance, s.id).checksum_ok is True  # read whole, once
    objects.delete(instance, d, f"cn=user3,{BASE}", actor="t")
    snapshots.restore(instance, s.id, actor="t")
    [result] = restore.run_pending(instance)
    assert result.state == "done" and result.entries == 9
    assert [e.to_dict() for e in objects.list_entries(instance, d)] == before


def test_listing_reads_a_file_only_when_it_changed(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(instance)
    objects.import_entries(instance, d, people(5), actor="t")
    s = snapshots.create(instance, d, actor="t")
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    reads: list[Path] = []
    real_verify = snapfile.verify

    def counting_verify(p: Path, expected: str | None) -> str:
        reads.append(p)
        return real_verify(p, expected)

    real_read_blocks = snapfile.read_blocks

    def counting_read_blocks(p: Path, expected: str | None) -> Any:
        reads.append(p)
        return real_read_blocks(p, expected)

    monkeypatch.setattr(snapfile, "verify", counting_verify)
    monkeypatch.setattr(snapfile, "read_blocks", counting_read_blocks)
    assert [x.checksum_ok for x in snapshots.list_snapshots(instance, d)] == [True]
    assert reads == []  # as written: not read
    os.utime(path)  # the same bytes, a new time (a copy, a restored backup)
    assert snapshots.get(instance, s.id).checksum_ok is True
    assert reads == [path]  # read whole once, and its time set back
    assert snapshots.get(instance, s.id).checksum_ok is True
    assert reads == [path]
    # The explicit check and the restore worker (checking as it loads) always read the file.
    snapshots.verify(instance, s.id)
    snapshots.restore(instance, s.id, actor="t")
    assert restore.run_pending(instance)[0].state == "done"
    assert reads == [path, path, path]


def test_snapshot_verify_reads_the_whole_file_now(instance: Instance) -> None:
    """`ams snapshot verify`: the check that listing skips when size and time are unchanged."""
    from conftest import run_ams

    d = make(instance)
    objects.import_entries(instance, d, people(5), actor="t")
    s = snapshots.create(instance, d, actor="t")
    good = run_ams("snapshot", "verify", s.id, "--json", home=instance.home.root)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["id"] == s.id
    path = instance.home.snapshots_dir / d / f"{s.id}.snap"
    times = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes().replace(b"user3", b"userX"))  # a failing disk, say
    os.utime(path, ns=(times, times))
    bad = run_ams("snapshot", "verify", s.id, home=instance.home.root)
    assert bad.returncode != 0 and "fails its checksum" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    missing = run_ams("snapshot", "verify", "s-0000000000", home=instance.home.root)
    assert missing.returncode != 0 and "s-0000000000" in missing.stderr
