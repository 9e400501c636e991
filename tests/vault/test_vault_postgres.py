"""The vault on PostgreSQL: the agent API flow, undo, rollback, retention and reads.

One throwaway cluster for this module (tests/pg.py); skipped without PostgreSQL binaries
unless AMS_TEST_REQUIRE_POSTGRES or CI is set.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from ams import audit
from ams.api import create_app
from ams.clock import ManualClock
from ams.instance import Instance
from ams.vault import certificates, devices, passwords, policy, regkeys
from vault_support import _small_keys, register  # noqa: F401 - _small_keys is a fixture

pytestmark = pytest.mark.postgres


def test_the_vault_on_postgresql(pg_instance: Instance, clock: ManualClock) -> None:
    instance = pg_instance
    assert instance.engine_name == "postgresql"
    policy.set_policy(instance, "agent", "test", history_keep_count=2, history_keep_days=0)
    key = regkeys.create(instance, "pg", "test", limit=2)
    with TestClient(create_app(instance)) as client:
        agent = register(client, instance, "pg-host", key=key.key)
        register(client, instance, "pg-host-2", key=key.key)
        used_up = client.post("/api/v1/agent/register", json={"registration_key": key.key, "name": "x"})
        assert used_up.status_code == 403

        for _ in range(5):
            devices.expire(instance, "test", device=agent.device_id)
            clock.advance(timedelta(days=1))
            agent.rotate()
        assert agent.version == 5
        history = passwords.read(instance, agent.device_id, "test", history=True)
        assert history["current"]["password"] == agent.passwords[5]
        assert [h["version"] for h in history["history"]] == [4, 3]

        # Undo inside the window, refused after it.
        clock.advance(timedelta(days=40))
        request_id = agent.report(agent.advice()).json()["request_id"]
        undone = client.delete(f"/api/v1/agent/password/{request_id}", headers=agent.headers)
        assert undone.json() == {"restored_version": 5}
        late = agent.report(agent.advice()).json()["request_id"]
        clock.advance(timedelta(seconds=61))
        assert client.delete(f"/api/v1/agent/password/{late}", headers=agent.headers).status_code == 409
        agent.version = 6

        # Rollback: the device reports an older version.
        assert agent.check(4).json()["reason"] == "rollback"
        with instance.session() as session:
            assert len(audit.list_events(session, event_id=audit.Event.PASSWORD_ROLLBACK_DETECTED)) == 1

        active = certificates.active_certificate(instance, "agent")
        assert active is not None
        with instance.session() as session:
            assert passwords.counts_by_certificate(session) == {active.thumbprint: (1, 2)}
        certificates.lost(instance, active.thumbprint, "test")
        lost_read = passwords.read(instance, agent.device_id, "test", history=True)
        assert lost_read["current"]["recoverable"] is False
        assert agent.advice()["reason"] == "expired"


def test_a_kept_connection_whose_session_ended_is_replaced_at_the_next_request(
    pg_instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server or a dropped session: the hot path's kept connection, idle for a
    while, is pinged before use (as the pool's pre-ping would) and replaced."""
    from ams.vault import hotcache, hotsql

    instance = pg_instance
    key = regkeys.create(instance, "pg", "test").key
    token = devices.register(instance, key, "pg-kept").token
    passwords.check_in(instance, token, None)  # the process keeps a connection now
    kept = hotcache.for_instance(instance).kept(instance)
    assert kept.conn is not None
    backend = hotsql.raw(kept.conn).info.backend_pid
    with instance.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")
    monkeypatch.setattr(kept, "used", kept.used - hotsql.PING_AFTER - 1)
    advice = passwords.check_in(instance, token, None)
    assert advice.rotate
    assert hotsql.raw(kept.conn).info.backend_pid != backend
