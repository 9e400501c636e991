"""The agent API in-process (TestClient on the `instance` fixture), blobs made as the agent makes them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from ams import apikeys, audit
from ams.api import create_app
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.instance import Instance, open_instance
from ams.vault import certificates, devices, regkeys
from vault_support import _small_keys, make_blob, register  # noqa: F401 - _small_keys is a fixture

UNDECRYPTABLE = "could not decrypt the password data provided by the client"


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


def _events(instance: Instance, event: audit.Event) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=event)


def test_register_check_in_and_rotate(client: TestClient, instance: Instance, clock: ManualClock) -> None:
    agent = register(client, instance, "web-1")
    assert agent.device_id.startswith("dev_") and len(agent.device_id) == 20
    assert agent.token.startswith(agent.device_id + ".")

    first = agent.check()
    assert first.status_code == 200
    advice = first.json()
    active = certificates.active_certificate(instance, "agent")
    assert active is not None
    assert advice == {
        "rotate": True,
        "reason": "new",
        "current_version": None,
        "next_version": 1,
        "certificate": {"thumbprint": active.thumbprint, "pem": active.pem},
        "policy": {"length": 20, "max_age_days": 30, "account": "Administrator"},
    }
    stored = agent.report(advice)
    assert stored.status_code == 201, stored.text
    body = stored.json()
    assert body["version"] == 1 and body["request_id"].startswith("pr_")
    assert body["effective_at"] == clock.now().isoformat()
    assert body["expires_at"] == (clock.now() + timedelta(days=30)).isoformat()
    agent.version = 1

    assert agent.advice() == {
        **advice,
        "rotate": False,
        "reason": None,
        "current_version": 1,
        "next_version": 2,
    }
    clock.advance(timedelta(days=30))
    assert agent.advice()["reason"] == "expired"
    agent.rotate()
    assert agent.version == 2

    devices.expire(instance, "test", device=agent.device_id)
    assert agent.advice()["reason"] == "forced"
    agent.rotate()
    assert agent.advice()["rotate"] is False

    rotated = _events(instance, audit.Event.PASSWORD_ROTATED)
    assert [(e.actor, e.details["version"]) for e in rotated] == [
        (f"device:{agent.device_id}", v) for v in (1, 2, 3)
    ]
    assert _events(instance, audit.Event.DEVICE_REGISTERED)[0].target == agent.device_id


def test_the_password_reads_back_and_every_read_is_audited(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    agent = register(client, instance, "db-1")
    agent.rotate()
    clock.advance(timedelta(days=31))
    agent.rotate()
    reader = apikeys.create(instance, "auditor", Role.READER, "test")
    headers = {"Authorization": f"Bearer {reader.token}"}

    current = client.get(f"/api/v1/devices/{agent.device_id}/password", headers=headers)
    assert current.status_code == 200
    entry = current.json()
    assert entry["password"] == agent.passwords[2]
    assert entry["account"] == "Administrator" and entry["version"] == 2 and entry["recoverable"] is True
    active = certificates.active_certificate(instance, "agent")
    assert active is not None and entry["certificate_thumbprint"] == active.thumbprint

    history = client.get("/api/v1/devices/db-1/password", params={"history": "true"}, headers=headers).json()
    assert history["current"]["password"] == agent.passwords[2]
    assert [(h["version"], h["password"]) for h in history["history"]] == [(1, agent.passwords[1])]

    reads = _events(instance, audit.Event.PASSWORD_READ)
    assert [(r.actor, r.target, r.details["history"]) for r in reads] == [
        (f"apikey:{reader.info.id}", agent.device_id, False),
        (f"apikey:{reader.info.id}", agent.device_id, True),
    ]
    assert reads[0].at == clock.now()
    for r in reads:
        assert agent.passwords[2] not in repr(r.to_dict())

    assert client.get(f"/api/v1/devices/{agent.device_id}/password").status_code == 401
    # A device token is not an API key.
    assert client.get(f"/api/v1/devices/{agent.device_id}/password", headers=agent.headers).status_code == 401
    listed = client.get("/api/v1/devices", headers=headers).json()
    assert [(d["id"], d["current_version"]) for d in listed] == [(agent.device_id, 2)]
    assert "password" not in listed[0]


def test_undecryptable_and_standby_blobs_are_refused_with_422(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "app-1")
    advice = agent.advice()
    good = make_blob(advice["certificate"]["pem"], "Administrator", "Secret-1", 1)
    raw = bytearray(base64.b64decode(good))
    raw[-5] ^= 0x01
    tampered = base64.b64encode(bytes(raw)).decode()
    standby = certificates.create(instance, "agent", "test", activate=False)
    assert standby.state == "standby"
    other_scope = certificates.create(instance, "d-0123456789", "test")
    cases = {
        "tampered": tampered,
        "not base64": "%%% not base64 %%%",
        "truncated": base64.b64encode(bytes(raw[:40])).decode(),
        "standby certificate": make_blob(standby.pem, "Administrator", "Secret-1", 1),
        "other scope's certificate": make_blob(other_scope.pem, "Administrator", "Secret-1", 1),
        "account disagrees": make_blob(advice["certificate"]["pem"], "root", "Secret-1", 1),
        "version disagrees": make_blob(advice["certificate"]["pem"], "Administrator", "Secret-1", 7),
    }
    for case, blob in cases.items():
        response = client.post(
            "/api/v1/agent/password",
            json={"account": "Administrator", "version": 1, "blob": blob},
            headers=agent.headers,
        )
        assert response.status_code == 422, case
        assert response.json() == {"error": "password_undecryptable", "message": UNDECRYPTABLE}, case
    assert agent.advice()["reason"] == "new"  # nothing was kept
    rejected = _events(instance, audit.Event.PASSWORD_REJECTED)
    assert len(rejected) == len(cases) and all(e.outcome == "failure" for e in rejected)
    assert "Secret-1" not in repr([e.to_dict() for e in rejected])

    # Once the standby certificate is activated, blobs to it are accepted (and to the old one refused).
    certificates.activate(instance, standby.thumbprint, "test")
    new_advice = agent.advice()
    assert new_advice["certificate"]["thumbprint"] == standby.thumbprint
    assert agent.report(new_advice).status_code == 201
    assert agent.report(advice, version=2).status_code == 422


def test_a_bad_body_is_422_bad_input(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "h")
    for body in (
        {"account": "Administrator", "version": 1},
        {"account": "", "version": 1, "blob": "AA=="},
        {},
    ):
        response = client.post("/api/v1/agent/password", json=body, headers=agent.headers)
        assert response.status_code == 422 and response.json()["error"] == "bad_input"
    bad_version = client.get("/api/v1/agent/password", params={"version": "x1"}, headers=agent.headers)
    assert bad_version.status_code == 422 and bad_version.json()["error"] == "bad_input"


def test_versions_only_grow_and_a_retry_is_answered_again(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "h")
    advice = agent.advice()
    account, pem = "Administrator", advice["certificate"]["pem"]
    blob = make_blob(pem, account, "First-password-1", 1)
    body = {"account": account, "version": 1, "blob": blob}
    first = client.post("/api/v1/agent/password", json=body, headers=agent.headers)
    again = client.post("/api/v1/agent/password", json=body, headers=agent.headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = {"account": account, "version": 1, "blob": make_blob(pem, account, "Other-password-2", 1)}
    conflict = client.post("/api/v1/agent/password", json=other, headers=agent.headers)
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"
    assert len(_events(instance, audit.Event.PASSWORD_ROTATED)) == 1


def test_delete_inside_and_outside_the_rollback_window(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    agent = register(client, instance, "h")
    agent.rotate()
    clock.advance(timedelta(days=40))
    advice = agent.advice()
    assert advice["reason"] == "expired"
    stored = agent.report(advice)
    request_id = stored.json()["request_id"]

    clock.advance(timedelta(seconds=59))
    undone = client.delete(f"/api/v1/agent/password/{request_id}", headers=agent.headers)
    assert undone.status_code == 200 and undone.json() == {"restored_version": 1}
    after = agent.advice()
    assert (after["current_version"], after["reason"], after["next_version"]) == (1, "expired", 2)
    again = client.delete(f"/api/v1/agent/password/{request_id}", headers=agent.headers)
    assert again.status_code == 404

    late = agent.report(after).json()["request_id"]
    clock.advance(timedelta(seconds=61))
    closed = client.delete(f"/api/v1/agent/password/{late}", headers=agent.headers)
    assert closed.status_code == 409 and closed.json()["error"] == "rollback_window_closed"
    assert agent.check(2).json()["current_version"] == 2
    undo_events = _events(instance, audit.Event.PASSWORD_UPDATE_UNDONE)
    assert [(e.details["removed_version"], e.details["restored_version"]) for e in undo_events] == [(2, 1)]


def test_undo_of_the_first_password_and_of_a_forced_rotation(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "h")
    first = agent.report(agent.advice()).json()["request_id"]
    assert client.delete(f"/api/v1/agent/password/{first}", headers=agent.headers).json() == {
        "restored_version": None
    }
    assert agent.advice()["reason"] == "new"
    agent.rotate()
    devices.expire(instance, "test", device=agent.device_id)
    forced = agent.report(agent.advice()).json()["request_id"]
    assert agent.check(2).json()["rotate"] is False
    client.delete(f"/api/v1/agent/password/{forced}", headers=agent.headers)
    assert agent.advice()["reason"] == "forced"  # the request is pending again


def test_a_token_reaches_only_its_own_device(client: TestClient, instance: Instance) -> None:
    alice = register(client, instance, "alice")
    bob = register(client, instance, "bob")
    alice.rotate()
    bob.rotate()
    request_of_alice = alice.report(alice.advice(), version=5).json()["request_id"]
    # Bob cannot undo Alice's update, nor see her version.
    assert client.delete(f"/api/v1/agent/password/{request_of_alice}", headers=bob.headers).status_code == 404
    assert bob.advice()["current_version"] == 1
    # A token that mixes Alice's id with Bob's secret opens nothing.
    mixed = alice.device_id + "." + bob.token.partition(".")[2]
    response = client.get("/api/v1/agent/password", headers={"Authorization": f"Bearer {mixed}"})
    assert response.status_code == 401 and response.json()["error"] == "device_token_invalid"
    assert response.headers["www-authenticate"] == "Bearer"
    for header in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer " + alice.device_id}):
        assert client.get("/api/v1/agent/password", headers=header).status_code == 401
    # An API key is not a device token.
    admin = apikeys.create(instance, "admin", Role.ADMIN, "test")
    assert (
        client.get("/api/v1/agent/password", headers={"Authorization": f"Bearer {admin.token}"}).status_code
        == 401
    )
    assert alice.check(5).json()["current_version"] == 5


def test_pending_devices_are_refused_until_approved(client: TestClient, instance: Instance) -> None:
    key = regkeys.create(instance, "needs-approval", "test", approval=True)
    response = client.post("/api/v1/agent/register", json={"registration_key": key.key, "name": "kiosk"})
    assert response.status_code == 201 and response.json()["status"] == "pending"
    token = response.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    for call in (
        lambda: client.get("/api/v1/agent/password", headers=headers),
        lambda: client.post(
            "/api/v1/agent/password", json={"account": "a", "version": 1, "blob": "AAAA"}, headers=headers
        ),
        lambda: client.delete("/api/v1/agent/password/pr_x", headers=headers),
    ):
        refused = call()
        assert refused.status_code == 403 and refused.json()["error"] == "device_pending_approval"
    admin = apikeys.create(instance, "admin", Role.ADMIN, "test")
    approved = client.post(
        f"/api/v1/devices/{response.json()['device_id']}/approve",
        headers={"Authorization": f"Bearer {admin.token}"},
    )
    assert approved.status_code == 200 and approved.json()["status"] == "active"
    assert client.get("/api/v1/agent/password", headers=headers).json()["reason"] == "new"


def test_registration_key_limit_and_disable_over_http(client: TestClient, instance: Instance) -> None:
    key = regkeys.create(instance, "one", "test", limit=1)
    body = {"registration_key": key.key, "name": "first"}
    assert client.post("/api/v1/agent/register", json=body).status_code == 201
    used_up = client.post("/api/v1/agent/register", json={**body, "name": "second"})
    assert used_up.status_code == 403 and used_up.json()["error"] == "registration_key_refused"
    other = regkeys.create(instance, "two", "test")
    regkeys.disable(instance, other.info.id, "test")
    disabled = client.post("/api/v1/agent/register", json={"registration_key": other.key, "name": "x"})
    assert disabled.status_code == 403
    wrong = client.post(
        "/api/v1/agent/register", json={"registration_key": key.info.id + ".nope", "name": "x"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "registration_key_invalid"
    assert key.secret not in wrong.text
    assert [d.name for d in devices.list_devices(instance)] == ["first"]


def test_locked_master_key_answers_503_and_keeps_nothing(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "h")
    advice = agent.advice()
    home, clock = instance.home, instance.clock
    instance.close()
    home.service_key_file.unlink()
    locked = open_instance(home, clock)
    try:
        with TestClient(create_app(locked)) as locked_client:
            agent.client = locked_client
            assert agent.advice()["reason"] == "new"  # the certificate exists: no secret needed
            response = agent.report(advice)
            assert response.status_code == 503 and response.json()["error"] == "master_key_locked"
            assert agent.advice()["reason"] == "new"
    finally:
        locked.close()
