"""Request limits and the error shape of every refusal, in-process (issue 17 item 15,
issue 18 item 6). The same limits against a real `ams serve`, with its memory measured:
tests/e2e/test_request_limits_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ams import apikeys
from ams.api import create_app, limits
from ams.apikeys import Role
from ams.instance import Instance
from ams.vault import devices

REGISTER = "/api/v1/agent/register"


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin(instance: Instance) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create(instance, 'admin', Role.ADMIN, 'test').token}"}


def _documented(response: object, status: int, code: str) -> str:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code
    assert "\n" not in body["message"]
    return str(body["message"])


def _chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    yield b'{"registration_key": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'", "name": "host"}'


def test_a_declared_body_over_the_route_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    body = b"x" * (limits.AGENT_JSON + 1)
    response = client.post(REGISTER, content=body, headers={"content-type": "application/json"})
    message = _documented(response, 413, "request_too_large")
    assert str(limits.AGENT_JSON) in message
    assert response.headers["connection"] == "close"


def test_a_chunked_body_is_counted_as_it_arrives(client: TestClient) -> None:
    response = client.post(
        REGISTER, content=_chunks(limits.AGENT_JSON * 4), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    _documented(response, 413, "request_too_large")


def test_a_route_without_a_body_refuses_one_before_it_runs(
    client: TestClient, instance: Instance, admin: dict[str, str]
) -> None:
    key = apikeys.create(instance, "victim", Role.READER, "test").info
    response = client.request(
        "DELETE", f"/api/v1/apikeys/{key.id}", content=b"x" * (limits.ADMIN_JSON + 1), headers=admin
    )
    _documented(response, 413, "request_too_large")
    # The route did not run: the key is not revoked.
    assert key.id in [k.id for k in apikeys.list_keys(instance)]
    # Unauthenticated, too: the size is checked before the credentials.
    anonymous = client.post("/api/v1/backups", content=b"x" * (limits.NO_BODY + 1))
    _documented(anonymous, 413, "request_too_large")


def test_bodies_within_the_limits_still_work(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post("/api/v1/apikeys", json={"name": "k" * 128, "role": "reader"}, headers=admin)
    assert created.status_code == 201, created.text
    # A route that takes no body accepts an empty one or a stray {}.
    revoked = client.request("DELETE", f"/api/v1/apikeys/{created.json()['id']}", json={}, headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert client.post("/api/v1/certificates/00ff/activate", json={}, headers=admin).status_code == 404


def test_ldif_import_takes_a_large_body_up_to_its_own_limit(
    client: TestClient, admin: dict[str, str]
) -> None:
    directory = client.post("/api/v1/directories", json={"dns_name": "corp.example.com"}, headers=admin)
    assert directory.status_code == 201, directory.text
    url = f"/api/v1/directories/{directory.json()['id']}/import"
    records = []
    for i in range(3000):
        records.append(f"dn: cn=user{i},dc=corp,dc=example,dc=com\nobjectClass: person\ncn: user{i}\n")
    base = "dn: dc=corp,dc=example,dc=com\nobjectClass: domain\ndc: corp\n\n"
    text = (base + "\n".join(records) + "\n" + "# padding\n" * 150_000).encode()
    assert limits.ADMIN_JSON * 100 < len(text) < limits.LDIF_IMPORT  # spooled to disk
    response = client.post(url, content=text, headers={**admin, "content-type": "text/plain"})
    assert response.status_code == 200, response.text
    assert response.json()["imported"] == 3001
    too_big = client.post(
        url,
        content=iter([b"# comment\n" * 100_000] * (limits.LDIF_IMPORT // 1_000_000 + 1)),
        headers={**admin, "content-type": "text/plain"},
    )
    _documented(too_big, 413, "request_too_large")


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"registration_key": "rk_x.y", "name": ', "truncated"),
        (b'{"registration_key": "rk_x.y", "name": "h\xff\xfe"}', "not UTF-8"),
        (b"[" * 2000 + b"]" * 2000, "nested past the parser"),
    ],
)
def test_bodies_that_are_not_json_answer_in_the_documented_shape(
    client: TestClient, body: bytes, what: str
) -> None:
    response = client.post(REGISTER, content=body, headers={"content-type": "application/json"})
    message = _documented(response, 422, "bad_input")
    assert "JSON" in message, what


def test_json_nesting_is_bounded(client: TestClient, admin: dict[str, str]) -> None:
    deep = {"name": "k", "role": "reader", "extra": [[[[[[[[]]]]]]]]}
    for _ in range(limits.MAX_JSON_DEPTH):
        deep = {"x": deep}
    response = client.post("/api/v1/apikeys", json=deep, headers=admin)
    assert "deep" in _documented(response, 422, "bad_input")
    chunked = client.post(
        "/api/v1/apikeys",
        content=iter([json.dumps(deep).encode()]),
        headers={**admin, "content-type": "application/json"},
    )
    assert "deep" in _documented(chunked, 422, "bad_input")
    with pytest.raises(Exception, match="deep"):
        limits.check_json_depth([[1]], limit=1)
    limits.check_json_depth({"a": [1, {"b": 2}]}, limit=3)


def test_unknown_paths_and_methods_answer_in_the_documented_shape(client: TestClient) -> None:
    _documented(client.get("/api/v1/nothing-here"), 404, "not_found")
    wrong = client.put(REGISTER, json={})
    _documented(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    _documented(client.post(REGISTER, json={"name": "x"}), 422, "bad_input")


def test_too_many_header_fields_are_refused(client: TestClient) -> None:
    headers = {f"x-h{i}": "1" for i in range(limits.MAX_HEADER_FIELDS + 1)}
    response = client.get("/healthz", headers=headers)
    assert response.status_code == 431
    assert response.json()["error"] == "request_too_large"
    assert client.get("/healthz", headers=dict(list(headers.items())[:50])).status_code == 200
    big = client.get("/healthz", headers={"x-big": "a" * limits.MAX_HEADER_BYTES})
    assert big.status_code == 431
    assert "bytes" in big.json()["message"]


def test_the_aws_endpoint_keeps_its_own_shape_and_limit(client: TestClient) -> None:
    response = client.post(
        "/",
        content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
        headers={"x-amz-target": "DirectoryService_20150416.DescribeDirectories"},
    )
    assert response.status_code == 400
    assert response.json()["__type"] == "SerializationException"


def test_names_refuse_control_characters_and_lone_surrogates(
    client: TestClient, instance: Instance, admin: dict[str, str]
) -> None:
    json_headers = {"content-type": "application/json"}
    for name in ("bad\\u0000name", "esc\\u001b[31m", "two\\nlines", "tab\\t", "next\\u0085", "lone\\ud800"):
        body = f'{{"name": "{name}"}}'.encode()
        response = client.post("/api/v1/apikeys", content=body, headers={**admin, **json_headers})
        assert "name" in _documented(response, 422, "bad_input")
        body = f'{{"registration_key": "rk_x.y", "name": "{name}"}}'.encode()
        registered = client.post(REGISTER, content=body, headers=json_headers)
        assert "name" in _documented(registered, 422, "bad_input")
    assert [k.name for k in apikeys.list_keys(instance)] == ["admin"]
    assert devices.list_devices(instance) == []


def test_an_unexpected_failure_answers_in_the_documented_shape_without_details(client: TestClient) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail from deep inside")

    client.app.add_api_route("/api/v1/broken-for-this-test", broken)  # type: ignore[attr-defined]
    response = client.get("/api/v1/broken-for-this-test")
    _documented(response, 500, "internal_error")
    assert "secret detail" not in response.text
