"""A restore into a new home killed midway (found by tests/faults/test_crash_ops.py): what the
crash leaves is resolved by the next command, and the restore can simply be run again."""

from __future__ import annotations

from pathlib import Path

import pytest

from ams import backup
from ams.backup import journal
from ams.backup import restore as restore_module
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.security.keyring import MasterKeyState
from backup_support import RECOVERY


class Crash(BaseException):
    """The process dies here (nothing catches it, nothing is cleaned up)."""


def _crash_into(
    populated: Instance, target: Home, monkeypatch: pytest.MonkeyPatch, *, after_swap: bool
) -> Path:
    archive = backup.create_backup(populated, actor="test").path
    with monkeypatch.context() as patch:
        patch.setattr(restore_module, "_undo", lambda *a, **k: None)  # a crash cleans nothing up
        if after_swap:
            original = journal.swap

            def swap(home: Home, *args: object, **kwargs: object) -> None:
                original(home, *args, **kwargs)  # type: ignore[arg-type]
                raise Crash()  # committed, the new service key not yet in place

            patch.setattr(journal, "swap", swap)
        else:
            patch.setattr(journal, "swap", lambda *a, **k: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            backup.restore_backup(archive, target, actor="test", password=lambda hint: RECOVERY)
    return archive


def test_a_crash_before_the_swap_leaves_no_home_and_the_restore_runs_again(
    populated: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Home(tmp_path / "new-home")
    archive = _crash_into(populated, target, monkeypatch, after_swap=False)
    assert journal.resume(target) == "rolled back"
    # Not even the staged service key (a secret) nor the folder the restore created remain.
    assert not target.root.exists()
    done = backup.restore_backup(archive, target, actor="test", password=lambda hint: RECOVERY)
    assert done.new_service_key
    again = open_instance(target)
    try:
        assert again.keyring.state == MasterKeyState.UNLOCKED
    finally:
        again.close()


def test_a_crash_after_the_commit_puts_the_staged_service_key_in_place(
    populated: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Home(tmp_path / "new-home")
    _crash_into(populated, target, monkeypatch, after_swap=True)
    assert journal.resume(target) == "finished"
    assert sorted(p.name for p in target.keys_dir.iterdir()) == ["service.key"]
    opened = open_instance(target)
    try:
        # The restored database is wrapped for the key the restore staged: it opens unlocked.
        assert opened.keyring.state == MasterKeyState.UNLOCKED
    finally:
        opened.close()
