"""A snapshot whose process died while taking it (found by tests/faults/test_crash_ops.py):
not listed as Creating for ever, its partial file removed, not counted against the limit."""

from __future__ import annotations

import fcntl
import os

from ams.db.models.directory import Snapshot
from ams.directory import directories, objects, snapshots
from ams.directory.entry import Entry
from ams.instance import Instance


def _directory(instance: Instance) -> str:
    made = directories.create(instance, dns_name="corp.example.com", short_name="CORP", actor="test")
    objects.import_entries(
        instance,
        made.id,
        [Entry("dc=corp,dc=example,dc=com", ["top", "domain"], {"dc": ["corp"]})],
        actor="t",
    )
    return made.id


def _left_creating(instance: Instance, directory_id: str, snapshot_id: str) -> None:
    """What a process killed while writing the file leaves: the row and a partial temp file."""
    with instance.transaction() as session:
        session.add(
            Snapshot(
                id=snapshot_id, directory_id=directory_id, type="Manual", status="Creating",
                start_time=instance.clock.now(), file=f"{directory_id}/{snapshot_id}.snap",
            )
        )  # fmt: skip
    folder = instance.home.snapshots_dir / directory_id
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / f".{snapshot_id}.snap.abcdefgh.tmp").write_bytes(b"partial")


def test_a_dead_takers_snapshot_becomes_failed_and_its_file_goes(instance: Instance) -> None:
    d = _directory(instance)
    for n in range(5):
        _left_creating(instance, d, f"s-00000000{n:02d}")
    # Before resolving, the five stuck rows fill the manual limit.
    assert snapshots.resolve_interrupted(instance, "test") == [f"s-00000000{n:02d}" for n in range(5)]
    listed = snapshots.list_snapshots(instance, d)
    assert {s.status for s in listed} == {"Failed"}
    assert all("interrupted" in (s.failure_reason or "") for s in listed)
    assert not [p.name for p in (instance.home.snapshots_dir / d).iterdir()]
    taken = snapshots.create(instance, d, actor="test")  # the limit is free again
    assert taken.status == "Completed"


def test_a_snapshot_still_being_taken_is_left_alone(instance: Instance) -> None:
    d = _directory(instance)
    _left_creating(instance, d, "s-0000000001")
    lock = instance.home.snapshots_dir / d / ".s-0000000001.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the taker, alive
        assert snapshots.resolve_interrupted(instance, "test") == []
        assert snapshots.list_snapshots(instance, d)[0].status == "Creating"
    finally:
        os.close(fd)
    assert snapshots.resolve_interrupted(instance, "test") == ["s-0000000001"]


def test_a_lock_left_by_a_taker_that_died_around_its_row_is_removed(instance: Instance) -> None:
    d = _directory(instance)
    taken = snapshots.create(instance, d, actor="test")
    stray = instance.home.snapshots_dir / d / ".s-00000000aa.lock"  # died before its row
    done = instance.home.snapshots_dir / d / f".{taken.id}.lock"  # died after completing
    for lock in (stray, done):
        lock.write_bytes(b"")
    assert snapshots.resolve_interrupted(instance, "test") == []
    assert sorted(p.name for p in (instance.home.snapshots_dir / d).iterdir()) == [f"{taken.id}.snap"]
