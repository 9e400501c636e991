"""Retention killed while it prunes (found by tests/faults/test_crash_ops.py): the catalog never
lists a backup whose file is gone, and the next prune removes what the crash kept."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ams import backup
from ams.backup import catalog
from ams.clock import ManualClock
from ams.instance import Instance


class Crash(BaseException):
    """The process dies here."""


def _three_backups(instance: Instance, clock: ManualClock) -> list[Path]:
    paths = []
    for _ in range(3):
        result = backup.create_backup(instance, actor="test", kind="scheduled")
        with instance.transaction() as session:
            catalog.mark_verified(session, result.backup_id, clock.now(), True)
        paths.append(result.path)
        clock.advance(timedelta(days=1))
    backup.set_settings(instance, actor="test", retain_days=0, keep_last=1)
    return paths


def _die_at_unlink(monkeypatch: pytest.MonkeyPatch, *, after: bool) -> None:
    """The first archive removal dies just before (or just after) the file goes."""
    original = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".amsbak":
            if after:
                original(self, missing_ok)
            raise Crash()
        original(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_crash_as_the_file_goes_never_leaves_a_listed_backup_without_its_file(
    instance: Instance, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_backups(instance, clock)
    with monkeypatch.context() as patch:
        _die_at_unlink(patch, after=True)
        with pytest.raises(Crash):
            backup.prune(instance, actor="test")
    listed = backup.list_backups(instance)
    assert all(e.exists for e in listed), [(e.backup_id, e.exists) for e in listed]


def test_the_next_prune_removes_the_file_a_crash_kept(
    instance: Instance, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _three_backups(instance, clock)
    with monkeypatch.context() as patch:
        _die_at_unlink(patch, after=False)
        with pytest.raises(Crash):
            backup.prune(instance, actor="test")
    listed = {e.path for e in backup.list_backups(instance)}
    kept = [p for p in paths if p.exists() and str(p) not in listed]
    assert len(kept) == 1  # pruned from the catalog, its file kept by the crash
    backup.prune(instance, actor="test")
    assert [p for p in paths if p.exists()] == [paths[-1]]
    assert [e.path for e in backup.list_backups(instance)] == [str(paths[-1])]
