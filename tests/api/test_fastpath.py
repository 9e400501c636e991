"""The hot path's own dispatcher (ams.api.fastpath): what it answers, and that every other
request reaches the FastAPI routes, body included, and is answered as before."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ams import apikeys, audit
from ams.api import create_app
from ams.api.fastpath import FAST_PATTERNS, FAST_ROUTES, FastRoutes
from ams.api.limits import AGENT_PASSWORD
from ams.api.metrics import Metrics
from ams.apikeys import Role
from ams.instance import Instance
from vault_support import Agent, _small_keys, register  # noqa: F401 - _small_keys is a fixture

PATH = "/api/v1/agent/password"


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


@pytest.fixture
def agent(client: TestClient, instance: Instance) -> Agent:
    agent = register(client, instance, "pc-fast")
    agent.rotate()
    return agent


def _current_version(instance: Instance, agent: Agent) -> Any:
    with instance.engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT version FROM device_passwords WHERE device_id = ? AND is_current", (agent.device_id,)
        ).scalar()


class _Recorder:
    """The application behind the dispatcher, recording what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.seen.append((scope["method"], scope["query_string"].decode(), body))
        await JSONResponse({"handed_on": True}, status_code=418)(scope, receive, send)


def test_the_fast_routes_are_the_check_in_the_report_and_the_admin_read() -> None:
    assert set(FAST_ROUTES) == {("GET", PATH), ("POST", PATH)}
    assert [(m, t) for m, _p, t, _h in FAST_PATTERNS] == [("GET", "/api/v1/devices/{device}/password")]


def test_an_administrators_read_is_answered_here_as_the_route_answers_it(
    client: TestClient, instance: Instance, agent: Agent
) -> None:
    reader = apikeys.create(instance, "auditor", Role.READER, "test")
    bearer = {"Authorization": f"Bearer {reader.token}"}
    path = f"/api/v1/devices/{agent.device_id}/password"
    fast = client.get(path, headers=bearer)
    assert fast.status_code == 200, fast.text
    assert fast.json()["password"] == agent.passwords[agent.version]
    # With a query, FastAPI's route answers: the same entry, the same shape.
    routed = client.get(path, params={"history": "false"}, headers=bearer)
    assert routed.status_code == 200
    assert routed.json() == fast.json()
    # By the device's name, and the errors the route gives.
    assert client.get("/api/v1/devices/pc-fast/password", headers=bearer).json()["version"] == agent.version
    missing = client.get("/api/v1/devices/dev_nosuchdevice/password", headers=bearer)
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = client.get(path, headers={"Authorization": f"Bearer {reader.info.id}.wrong"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "authentication_required")
    revoked = apikeys.create(instance, "gone", Role.READER, "test")
    apikeys.revoke(instance, revoked.info.id, "test")
    assert client.get(path, headers={"Authorization": f"Bearer {revoked.token}"}).status_code == 401
    assert client.get(path).status_code == 401  # no token: the route answers
    # Each read audited, the refused ones not as reads; named in the metrics by its template.
    with instance.session() as session:
        reads = audit.list_events(session, event_id=int(audit.Event.PASSWORD_READ))
    assert [e.actor for e in reads].count(f"apikey:{reader.info.id}") == 3
    metrics = client.get("/metrics", headers=bearer).text
    assert 'route="/api/v1/devices/{device}/password",status="200"' in metrics
    assert agent.device_id not in metrics


def test_what_the_dispatcher_does_not_know_reaches_the_application_with_its_body(
    instance: Instance, agent: Agent
) -> None:
    recorder = _Recorder()
    app = FastRoutes(
        recorder,
        instance,
        errors=lambda exc: JSONResponse(exc.to_dict(), exc.http_status),
        metrics=Metrics(instance),
    )
    bearer = {"Authorization": f"Bearer {agent.token}"}
    good = {"account": "Administrator", "version": 5, "blob": "QUJD"}
    handed_on = [
        ("POST", "", json.dumps({**good, "extra": [[1]]}).encode(), {**bearer}),  # another shape
        ("POST", "", b'{"account": "Administrator", "version": ', {**bearer}),  # not JSON
        ("POST", "", json.dumps({**good, "version": "5"}).encode(), {**bearer}),  # a string
        ("POST", "", json.dumps({**good, "account": ""}).encode(), {**bearer}),  # too short
        ("POST", "", json.dumps(good).encode(), {}),  # no token
        ("POST", "", json.dumps(good).encode(), {**bearer, "Content-Type": "text/plain"}),
        ("GET", "version=abc", b"", {**bearer}),
        ("GET", "version=1&version=2", b"", {**bearer}),
        ("GET", "", b"", {"Authorization": "Basic x"}),
        ("PUT", "", json.dumps(good).encode(), {**bearer}),
        ("GET", "", b"", {**bearer}),  # another path
    ]
    with TestClient(app) as client:
        for index, (method, query, body, headers) in enumerate(handed_on):
            path = "/api/v1/agent/passwords" if index == len(handed_on) - 1 else PATH
            if body and "Content-Type" not in headers:
                headers = {**headers, "Content-Type": "application/json"}
            answer = client.request(
                method, f"{path}?{query}" if query else path, content=body, headers=headers
            )
            assert answer.status_code == 418, (method, query, body, answer.text)
            assert recorder.seen[-1] == (method, query, body)
        # A well-formed check-in is answered here.
        answer = client.get(PATH, params={"version": str(agent.version)}, headers=bearer)
        assert answer.status_code == 200 and answer.json()["current_version"] == agent.version
    assert len(recorder.seen) == len(handed_on)


def test_bad_input_is_answered_as_the_routes_answer_it(
    client: TestClient, instance: Instance, agent: Agent
) -> None:
    before = _current_version(instance, agent)
    bearer = {"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"}

    too_large = client.post(PATH, content=b"x" * (AGENT_PASSWORD + 1), headers=bearer)
    assert too_large.status_code == 413
    assert too_large.json()["error"] == "request_too_large"
    assert too_large.headers["connection"] == "close"

    not_json = client.post(PATH, content=b'{"account": "Administrator",', headers=bearer)
    assert not_json.status_code == 422
    assert not_json.json()["message"].startswith("the request body is not valid JSON")

    as_string = client.post(
        PATH, json={"account": "Administrator", "version": "9", "blob": "QUJD"}, headers=bearer
    )
    assert (as_string.status_code, as_string.json()["error"]) == (422, "bad_input")
    assert as_string.json()["message"].startswith("version:")

    wrong_method = client.put(PATH, json={}, headers=bearer)
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")

    bad_query = client.get(PATH, params={"version": "1.5"}, headers=bearer)
    assert (bad_query.status_code, bad_query.json()["error"]) == (422, "bad_input")

    no_token = client.get(PATH)
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"

    wrong = {"Authorization": f"Bearer {agent.device_id}.not-the-secret"}
    refused = client.post(
        PATH, json={"account": "Administrator", "version": 9, "blob": "QUJD"}, headers=wrong
    )
    assert (refused.status_code, refused.json()["error"]) == (401, "device_token_invalid")
    assert refused.headers["www-authenticate"] == "Bearer"
    with instance.session() as session:
        failed = audit.list_events(session, event_id=audit.Event.DEVICE_AUTH_FAILED)
    assert [e.target for e in failed] == [agent.device_id]

    undecryptable = client.post(
        PATH, json={"account": "Administrator", "version": before + 1, "blob": "QUJD"}, headers=bearer
    )
    assert (undecryptable.status_code, undecryptable.json()["error"]) == (422, "password_undecryptable")
    assert _current_version(instance, agent) == before  # nothing stored


def test_a_fast_answer_is_named_counted_and_timed_like_every_answer(client: TestClient, agent: Agent) -> None:
    bearer = {"Authorization": f"Bearer {agent.token}"}
    for _ in range(3):
        answer = client.get(PATH, params={"version": str(agent.version)}, headers=bearer)
        assert answer.status_code == 200
        assert answer.headers["x-ams-worker"] == str(os.getpid())
    refused = client.get(PATH, headers={"Authorization": f"Bearer {agent.device_id}.wrong"})
    assert refused.status_code == 401 and refused.headers["x-ams-worker"] == str(os.getpid())
    metrics = client.get("/metrics", headers=bearer).text
    # agent.rotate() in the fixture checked in once and reported once
    assert f'ams_http_requests_total{{route="{PATH}",status="200"}} 4.0' in metrics
    assert f'ams_http_requests_total{{route="{PATH}",status="201"}} 1.0' in metrics
    assert f'ams_http_requests_total{{route="{PATH}",status="401"}} 1.0' in metrics
    assert f'ams_http_request_duration_seconds_count{{route="{PATH}"}} 6.0' in metrics


def test_headers_over_the_limits_reach_the_application_which_refuses_them(
    client: TestClient, agent: Agent
) -> None:
    headers = {"Authorization": f"Bearer {agent.token}", **{f"X-Extra-{i}": "x" for i in range(120)}}
    answer = client.get(PATH, headers=headers)
    assert (answer.status_code, answer.json()["error"]) == (431, "request_too_large")
