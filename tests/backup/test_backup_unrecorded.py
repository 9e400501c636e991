"""A backup killed after its archive is in place and before it is recorded (found by
tests/faults/test_crash_ops.py): the next backup into that folder records it (event 1507)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ams import audit, backup
from ams.backup import create as create_module
from ams.backup import embedded
from ams.backup.create import create_backup_at
from ams.instance import Instance


class Crash(BaseException):
    """The process dies here."""


def _unrecorded(folder: Path, listed: list[str]) -> list[str]:
    return sorted(p.name for p in folder.glob("*.amsbak") if str(p) not in listed)


@pytest.mark.parametrize("path", ["orm", "embedded"])
def test_the_next_backup_records_an_archive_a_crash_left_unrecorded(
    populated: Instance, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    home = populated.home
    source = create_module._InstanceSource if path == "orm" else embedded.EmbeddedSource
    with monkeypatch.context() as patch:
        patch.setattr(source, "record", lambda self, result, actor: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            if path == "orm":
                backup.create_backup(populated, actor="test")
            else:
                create_backup_at(home, actor="test")
    listed = [e.path for e in backup.list_backups(populated) if e.path]
    left = _unrecorded(home.backups_dir, listed)
    assert len(left) == 1  # complete, renamed into place, not in the catalog
    if path == "orm":
        newer = backup.create_backup(populated, actor="test")
    else:
        newer = create_backup_at(home, actor="test")
    listed = [e.path for e in backup.list_backups(populated) if e.path]
    assert _unrecorded(home.backups_dir, listed) == []
    with populated.session() as session:
        events = audit.list_events(session, event_id=int(audit.Event.BACKUP_CATALOG_RESCANNED))
    assert events[-1].details["added"] and events[-1].details["by_backup"] == newer.backup_id
