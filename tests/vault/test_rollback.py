"""Rollback detection: when the device and the server disagree on the current version, rotate.

(a) the device is reverted (its agent state file replaced by an older copy): it reports an
    older version than the server's current one;
(b) the AMS database is replaced by an older copy of itself: the device reports a newer
    version than the server knows.
Both answer rotate with reason "rollback" and write audit event 1410.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ams import audit
from ams.api import create_app
from ams.clock import ManualClock
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.vault import passwords
from vault_support import Agent, _small_keys, register  # noqa: F401 - _small_keys is a fixture


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


def _rollbacks(instance: Instance) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=audit.Event.PASSWORD_ROLLBACK_DETECTED)


def test_a_device_reverted_to_an_older_state_rotates_with_reason_rollback(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    agent = register(client, instance, "reverted")
    agent.rotate()
    clock.advance(timedelta(days=31))
    agent.rotate()
    clock.advance(timedelta(days=31))
    agent.rotate()
    assert agent.version == 3 and agent.advice()["rotate"] is False
    assert _rollbacks(instance) == []

    # The device's state file is replaced by the copy from when it had version 1.
    agent.version = 1
    advice = agent.advice()
    assert (advice["rotate"], advice["reason"], advice["current_version"], advice["next_version"]) == (
        True,
        "rollback",
        3,
        4,
    )
    events = _rollbacks(instance)
    assert len(events) == 1
    assert events[0].target == agent.device_id and events[0].actor == f"device:{agent.device_id}"
    assert events[0].details == {"device_version": 1, "server_version": 3}

    assert agent.report(advice).status_code == 201
    agent.version = 4
    assert agent.advice()["rotate"] is False
    # A device that lost every state but its token (no version at all) is a rollback too.
    assert agent.check(None).json()["reason"] == "rollback"
    assert len(_rollbacks(instance)) == 2


def _copy_database(home: Home, to: Path) -> None:
    to.mkdir()
    for path in home.data_dir.iterdir():
        shutil.copy2(path, to / path.name)


def _put_back(home: Home, saved: Path) -> None:
    for path in home.data_dir.iterdir():
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, home.data_dir / path.name)


def test_a_database_restored_from_an_older_copy_makes_devices_rotate(
    instance: Instance, clock: ManualClock, tmp_path: Path
) -> None:
    home = instance.home
    with TestClient(create_app(instance)) as client:
        agent = register(client, instance, "db-restored")
        agent.rotate()
        assert agent.version == 1
    instance.close()
    _copy_database(home, tmp_path / "old-db")  # taken while the instance is closed

    clock.advance(timedelta(days=31))
    reopened = open_instance(home, clock)
    with TestClient(create_app(reopened)) as client:
        agent.client = client
        agent.rotate()
        assert agent.version == 2
        newest_password = agent.passwords[2]
    reopened.close()

    _put_back(home, tmp_path / "old-db")
    restored = open_instance(home, clock)
    try:
        with TestClient(create_app(restored)) as client:
            agent.client = client
            advice = agent.advice()
            assert (advice["rotate"], advice["reason"], advice["current_version"]) == (True, "rollback", 1)
            # The next version is above what the device already had, so versions never repeat.
            assert advice["next_version"] == 3
            events = _rollbacks(restored)
            assert [e.details for e in events] == [{"device_version": 2, "server_version": 1}]
            agent.rotate()
            assert agent.version == 3 and agent.advice()["rotate"] is False
        # The password the restored database lacked is gone; the new one reads back.
        current = passwords.read(restored, agent.device_id, "test")
        assert current["version"] == 3 and current["password"] == agent.passwords[3]
        assert current["password"] != newest_password
    finally:
        restored.close()


def test_agreeing_versions_are_not_a_rollback(client: TestClient, instance: Instance) -> None:
    agent: Agent = register(client, instance, "steady")
    assert agent.advice()["reason"] == "new"  # no version on either side
    agent.rotate()
    for _ in range(3):
        assert agent.advice()["rotate"] is False
    assert _rollbacks(instance) == []
