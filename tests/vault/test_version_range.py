"""Password versions never run into a limit the agent protocol cannot express (issue 18, item 5).

Through the agent API (TestClient on a real app and instance, agents as vault_support makes
them), on SQLite and on PostgreSQL: a jump to the top of the range is refused and the device
rotates on; a device whose versions already sit at 2**31 - 1 (what the old code accepted)
rotates past it; versions the agent sends that the server cannot have issued are not built on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from ams import audit
from ams.api import create_app
from ams.db.models.vault import Device, DevicePassword
from ams.instance import Instance
from ams.vault import passwords
from ams.vault.passwords import MAX_STEP, MAX_VERSION
from vault_support import Agent, _small_keys, make_blob, register  # noqa: F401 - _small_keys is a fixture

OLD_TOP = 2**31 - 1  # where 0.x refused the next version: the device was locked out


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


def _post(
    agent: Agent, version: Any, *, plaintext_version: int | None = None, advice: dict[str, Any] | None = None
) -> Any:
    advice = advice or agent.advice()
    pem = advice["certificate"]["pem"]
    account = advice["policy"]["account"]
    blob = make_blob(pem, account, "Secret-Value-1234", plaintext_version or 1)
    return agent.client.post(
        "/api/v1/agent/password",
        json={"account": account, "version": version, "blob": blob},
        headers=agent.headers,
    )


def _place_at(instance: Instance, agent: Agent, version: int) -> None:
    """Put the device's current password at ``version``, as a database written earlier holds it."""
    with instance.transaction() as session:
        session.execute(
            update(DevicePassword)
            .where(DevicePassword.device_id == agent.device_id, DevicePassword.is_current.is_(True))
            .values(version=version)
        )
        session.execute(update(Device).where(Device.id == agent.device_id).values(current_version=version))
    agent.version = version


def _refused(response: Any, code: str, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    message: str = body["message"]
    assert "\n" not in message
    return message


def test_a_jump_to_the_top_is_refused_and_the_device_rotates_on(
    client: TestClient, instance: Instance
) -> None:
    agent = register(client, instance, "jumper")
    agent.rotate()
    assert agent.version == 1
    # The report of the issue: accepted before, after which every check-in advised 2**31.
    message = _refused(agent.report(agent.advice(), version=OLD_TOP), "password_version_out_of_range")
    assert f"more than {MAX_STEP} above the server's 1" in message and "next_version" in message
    advice = agent.advice()
    assert (advice["current_version"], advice["next_version"]) == (1, 2)
    # The farthest a report may go is MAX_STEP above the highest version held; one more is refused.
    _refused(agent.report(advice, version=1 + MAX_STEP + 1), "password_version_out_of_range")
    stored = agent.report(advice, version=1 + MAX_STEP)
    assert stored.status_code == 201, stored.text
    agent.version = 1 + MAX_STEP
    advice = agent.advice()
    assert (advice["current_version"], advice["next_version"]) == (1 + MAX_STEP, 2 + MAX_STEP)
    assert agent.report(advice).status_code == 201


def _rotates_past_the_old_top(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "at-the-old-top")
    agent.rotate()
    _place_at(instance, agent, OLD_TOP)
    for expected in (OLD_TOP + 1, OLD_TOP + 2):
        passwords_before = len(agent.passwords)
        advice = agent.advice()
        assert advice["next_version"] == expected
        stored = agent.report({**advice, "rotate": True})
        assert stored.status_code == 201, stored.text
        assert stored.json()["version"] == expected
        assert len(agent.passwords) == passwords_before + 1
        agent.version = expected
    read = passwords.read(instance, agent.device_id, "test", history=True)
    assert read["current"]["version"] == OLD_TOP + 2
    assert read["current"]["password"] == agent.passwords[OLD_TOP + 2]


def test_a_device_at_the_old_top_rotates_past_it(client: TestClient, instance: Instance) -> None:
    _rotates_past_the_old_top(client, instance)


@pytest.mark.postgres
def test_a_device_at_the_old_top_rotates_past_it_on_postgresql(pg_instance: Instance) -> None:
    # INTEGER would refuse 2**31 ("integer out of range"): migration 0006 makes the columns BIGINT.
    with TestClient(create_app(pg_instance)) as client:
        _rotates_past_the_old_top(client, pg_instance)


def test_walking_to_the_top_of_the_range(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "walker")
    agent.rotate()
    _place_at(instance, agent, MAX_VERSION - 3)
    walked = []
    advice: dict[str, Any] = {}
    while True:
        response = agent.check()
        if response.status_code != 200:
            break
        advice = response.json()
        assert advice["next_version"] <= MAX_VERSION  # never a version the report would refuse
        stored = agent.report({**advice, "rotate": True})
        assert stored.status_code == 201, stored.text
        agent.version = stored.json()["version"]
        walked.append(agent.version)
    assert walked == [MAX_VERSION - 2, MAX_VERSION - 1, MAX_VERSION]
    # 2**33 reports of the largest step from 1: out of reach, yet answered plainly.
    message = _refused(response, "password_versions_exhausted", 409)
    assert "ams device disable" in message and "ams-agent register" in message
    _refused(_post(agent, MAX_VERSION + 1, advice=advice), "password_version_out_of_range")


def test_a_version_the_server_cannot_have_issued_is_not_built_on(
    client: TestClient, instance: Instance
) -> None:
    # Below 1, or so high that its successor could not be reported (a damaged state file).
    for sent in ("0", "-1", "-9223372036854775808", str(MAX_VERSION), "9999999999999999999", "9" * 63):
        agent = register(client, instance, f"odd-state{sent[:20]}")
        agent.rotate()
        response = agent.check(sent)
        assert response.status_code == 200, response.text
        advice = response.json()
        assert (advice["rotate"], advice["reason"], advice["current_version"], advice["next_version"]) == (
            True,
            "rollback",
            1,
            2,
        )
        assert agent.report(advice).status_code == 201
        agent.version = 2
        assert agent.advice()["rotate"] is False
        with instance.session() as session:
            events = audit.list_events(session, event_id=audit.Event.PASSWORD_ROLLBACK_DETECTED)
        (event,) = [e for e in events if e.target == agent.device_id]
        assert event.details == {
            "device_version": int(sent),
            "server_version": 1,
            "device_version_ignored": True,
        }


def test_a_version_just_within_reach_is_built_on(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "restored-server")
    agent.rotate()
    # The database was restored from a copy older than many rotations of the device.
    advice = agent.check(MAX_STEP).json()
    assert (advice["reason"], advice["next_version"]) == ("rollback", MAX_STEP + 1)
    assert agent.report(advice).status_code == 201
    # One above the reach of the next report: not built on.
    assert agent.check(MAX_STEP + 1 + MAX_STEP).json()["next_version"] == MAX_STEP + 2


def test_a_query_version_that_is_not_a_plain_number_is_refused(
    client: TestClient, instance: Instance
) -> None:
    agent = register(client, instance, "typo")
    for sent in ("1e3", "3_0", "\u0663", "+5", "0x10", "1.0", "1" * 64):
        _refused(agent.check(sent), "bad_input")


def test_a_reported_version_outside_the_range_changes_nothing(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "bad-report")
    agent.rotate()
    advice = agent.advice()
    for version, code in (
        ("2", "bad_input"),
        (True, "bad_input"),
        (2.0, "bad_input"),
        (None, "bad_input"),
        (0, "password_version_out_of_range"),
        (-2, "password_version_out_of_range"),
        (MAX_VERSION + 1, "password_version_out_of_range"),
        (10**30, "password_version_out_of_range"),
    ):
        _refused(_post(agent, version, plaintext_version=2, advice=advice), code)
    after = agent.advice()
    assert (after["rotate"], after["current_version"], after["next_version"]) == (False, 1, 2)
