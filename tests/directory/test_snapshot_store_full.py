"""A snapshot store that refuses the file (found by tests/faults/test_crash_disk.py): one line
with its own error (exit 86), not an internal error; the snapshot is Failed, nothing kept."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ams.directory import directories, objects, snapfile, snapshots
from ams.directory.entry import Entry
from ams.errors import SnapshotStoreFailed
from ams.instance import Instance


@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_store_is_one_clear_error(
    instance: Instance, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    made = directories.create(instance, dns_name="corp.example.com", short_name="CORP", actor="t")
    root = Entry("dc=corp,dc=example,dc=com", ["top", "domain"], {"dc": ["corp"]})
    objects.import_entries(instance, made.id, [root], actor="t")

    def refuse(path: Path, *args: object, **kwargs: object) -> object:
        raise OSError(code, "refused")

    monkeypatch.setattr(snapfile, "write", refuse)
    with pytest.raises(SnapshotStoreFailed, match=says) as raised:
        snapshots.create(instance, made.id, actor="t")
    assert raised.value.exit_status == 86
    assert [s.status for s in snapshots.list_snapshots(instance, made.id)] == ["Failed"]
    folder = instance.home.snapshots_dir / made.id
    assert not folder.exists() or not list(folder.iterdir())
