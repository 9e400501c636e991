"""The same `ams backup restore … --database-url URL` run again after it was killed once the new
home was in place (found by tests/faults/test_crash_pg.py): the home now keeps its database at
URL, so the command restores in place instead of refusing; another URL is still refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ams import backup
from ams.backup import journal
from ams.backup import restore as restore_module
from ams.errors import BadInput
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.security.keyring import MasterKeyState
from backup_support import RECOVERY
from pg import PostgresServer


class Crash(BaseException):
    """The process dies here (nothing catches it, nothing is cleaned up)."""


def _killed_after_the_swap(archive: Path, target: Home, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = journal.swap

    def swap(home: Home, *args: object, **kwargs: object) -> None:
        original(home, *args, **kwargs)  # type: ignore[arg-type]
        raise Crash()  # the home is in place; what follows the swap never ran

    with monkeypatch.context() as patch:
        patch.setattr(restore_module, "_undo", lambda *a, **k: None)  # a crash cleans nothing up
        patch.setattr(journal, "swap", swap)
        with pytest.raises(Crash):
            backup.restore_backup(
                archive, target, actor="test", password=lambda hint: RECOVERY, database_url=url
            )


def _again(archive: Path, target: Home, url: str, engine: str) -> None:
    done = backup.restore_backup(
        archive, target, actor="test", password=lambda hint: RECOVERY, database_url=url
    )
    assert done.pre_restore is not None  # in place: the home's state was kept first
    instance = open_instance(target)
    try:
        assert instance.engine_name == engine
        assert instance.keyring.state == MasterKeyState.UNLOCKED
    finally:
        instance.close()


def test_again_onto_the_embedded_database(
    populated: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = backup.create_backup(populated, actor="test").path
    target = Home(tmp_path / "new-home")
    _killed_after_the_swap(archive, target, "sqlite", monkeypatch)
    _again(archive, target, "sqlite", "sqlite")
    with pytest.raises(BadInput, match="holds an instance"):  # another database: refused
        backup.restore_backup(
            archive, target, actor="test", password=lambda h: RECOVERY, database_url="postgresql://x@h/db"
        )


@pytest.mark.postgres
def test_again_onto_postgresql(
    populated: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: PostgresServer
) -> None:
    archive = backup.create_backup(populated, actor="test").path
    target = Home(tmp_path / "new-home")
    url = pg_server.create_database()
    try:
        _killed_after_the_swap(archive, target, url, monkeypatch)
        _again(archive, target, url, "postgresql")
        with pytest.raises(BadInput, match="holds an instance"):
            backup.restore_backup(
                archive, target, actor="test", password=lambda h: RECOVERY, database_url="sqlite"
            )
    finally:
        pg_server.drop_database(url)
