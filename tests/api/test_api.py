"""The REST API in-process: authentication, roles, locked mode, health and metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ams import apikeys, audit
from ams.api import create_app
from ams.apikeys import Role
from ams.instance import Instance, open_instance


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


@pytest.fixture
def admin(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'admin', Role.ADMIN, 'test').token}"}


@pytest.fixture
def reader(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'reader', Role.READER, 'test').token}"}


def test_healthz_and_metrics_need_no_credentials(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "master_key": "unlocked", "database": "ok"}
    body = client.get("/metrics").text
    assert "ams_master_key_unlocked 1.0" in body
    assert 'ams_http_requests_total{route="/healthz",status="200"}' in body


def test_status_needs_a_key(client: TestClient, reader: dict[str, str]) -> None:
    missing = client.get("/api/v1/status")
    assert missing.status_code == 401
    assert missing.json()["error"] == "authentication_required"
    assert missing.headers["www-authenticate"] == "Bearer"
    ok = client.get("/api/v1/status", headers=reader)
    assert ok.status_code == 200
    assert ok.json()["master_key"]["state"] == "unlocked"


@pytest.mark.parametrize(
    "header",
    ["Bearer nonsense", "Bearer ak_0000000000000000.wrong", "Basic abc", "Bearer "],
)
def test_bad_credentials_are_401_and_audited(client: TestClient, instance: Instance, header: str) -> None:
    response = client.get("/api/v1/status", headers={"Authorization": header})
    assert response.status_code == 401
    with instance.session() as session:
        failures = audit.list_events(session, event_id=audit.Event.API_AUTH_FAILED)
    assert len(failures) == (0 if header in ("Basic abc", "Bearer ") else 1)


def test_wrong_secret_for_a_real_key(client: TestClient, reader: dict[str, str]) -> None:
    key_id = reader["Authorization"].split()[1].split(".")[0]
    response = client.get("/api/v1/status", headers={"Authorization": f"Bearer {key_id}.forged"})
    assert response.status_code == 401


def test_reader_may_not_administer(client: TestClient, reader: dict[str, str]) -> None:
    response = client.post("/api/v1/apikeys", json={"name": "x"}, headers=reader)
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"


def test_admin_creates_lists_and_revokes(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post("/api/v1/apikeys", json={"name": "ci", "role": "reader"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    listed = client.get("/api/v1/apikeys", headers=admin).json()
    assert {k["name"] for k in listed} == {"admin", "ci"}
    assert all("secret" not in k for k in listed)
    assert client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    revoked = client.delete(f"/api/v1/apikeys/{created.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    assert client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.delete("/api/v1/apikeys/ak_nothere", headers=admin).status_code == 404


def test_bad_body_is_422_with_a_message(client: TestClient, admin: dict[str, str]) -> None:
    response = client.post("/api/v1/apikeys", json={"name": "x", "role": "emperor"}, headers=admin)
    assert response.status_code == 422
    assert response.json()["error"] == "bad_input" and "role" in response.json()["message"]


def test_locked_instance_answers_503_for_secrets(instance: Instance, admin: dict[str, str]) -> None:
    home, clock = instance.home, instance.clock
    instance.close()
    home.service_key_file.unlink()
    locked = open_instance(home, clock)
    try:
        with TestClient(create_app(locked)) as client:
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert "ams_master_key_unlocked 0.0" in client.get("/metrics").text
            # Authentication does not need the master key, so the answer is 503, not 401.
            response = client.post("/api/v1/apikeys", json={"name": "x"}, headers=admin)
            assert response.status_code == 503
            assert response.json()["message"].startswith("master key locked: run `ams security unlock`")
            assert response.headers["retry-after"] == "60"
            status = client.get("/api/v1/status", headers=admin)
            assert status.status_code == 200 and status.json()["master_key"]["state"] == "locked"
    finally:
        locked.close()


def test_audit_endpoint(client: TestClient, reader: dict[str, str]) -> None:
    events = client.get("/api/v1/audit", headers=reader).json()
    assert [e["event_id"] for e in events][:2] == [1000, 1100]


def test_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/api/v1/status", "/api/v1/apikeys", "/api/v1/audit"} <= set(paths)


def test_only_the_local_docs_page_is_served(client: TestClient) -> None:
    # GET /docs is served from packaged files (tests/e2e/test_openapi_browser.py); no ReDoc.
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 404
