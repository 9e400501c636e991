"""Fuzzing what the API reads: the agent API's bodies, the AWS JSON protocol (correctly
signed requests with any body, target and headers) and SigV4 Authorization headers.

No answer is a 5xx, every error answer is the documented shape with a documented code
(docs/errors.md for /api/v1, docs/aws-compat.md's exception types for the AWS endpoint),
and the parsers raise only their own errors. Bounded in CI (Hypothesis profile ``ci``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from faults_support import RUN, count, record
from hypothesis import example, given
from hypothesis import strategies as st

from ams import apikeys
from ams.api import create_app
from ams.api.aws_ds import sigv4
from ams.api.aws_ds.protocol import TARGET_PREFIX, AwsError
from ams.api.aws_ds.validation import OPERATIONS, validate
from ams.apikeys import Role
from ams.errors import all_errors
from ams.home import Home
from ams.instance import Instance, open_instance

AREA = "fuzzing"
CODES = {cls.code for cls in all_errors()}
AWS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "aws-compat.md").read_text("utf-8")
AWS_TYPES = set(re.findall(r"`([A-Za-z]+Exception)`", AWS_DOC))
ANY_TEXT = st.text(
    st.one_of(st.characters(exclude_categories=[]), st.characters(categories=["Cs"])), max_size=40
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=10,
)


@dataclass
class Api:
    instance: Instance
    client: TestClient
    device_token: str
    other_device: str
    regkey: str
    key_id: str
    secret: str
    genuine_blob: str


@pytest.fixture(scope="module")
def api(golden: tuple[Home, object, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from ams.clock import ManualClock
    from ams.vault import passwords
    from backup_support import ACCOUNT, copy_home

    golden_home, fleet, now = golden
    home = copy_home(golden_home, tmp_path_factory.mktemp("fuzzapi") / "home")  # type: ignore[arg-type]
    instance = open_instance(home, ManualClock(now))  # type: ignore[arg-type]
    (device, token), (other, _t) = list(fleet.tokens.items())[:2]  # type: ignore[attr-defined]
    with instance.session() as session:
        from sqlalchemy import select

        from ams.db.models.vault import DevicePassword

        blob = session.scalars(select(DevicePassword.blob).where(DevicePassword.device_id == device)).first()
    assert blob is not None and passwords is not None and ACCOUNT
    key = apikeys.create(instance, "fuzz", Role.ADMIN, "test")
    try:
        with TestClient(create_app(instance)) as client:
            yield Api(
                instance,
                client,
                token,
                other,
                fleet.regkey,  # type: ignore[attr-defined]
                key.info.id,
                key.secret,
                base64.b64encode(blob).decode(),
            )
    finally:
        instance.close()


def _check_api_answer(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert status < 500, (status, response.text)  # type: ignore[attr-defined]
    if status >= 400:
        body = response.json()  # type: ignore[attr-defined]
        assert body.get("error") in CODES, body
        assert isinstance(body.get("message"), str) and "Traceback" not in body["message"]


# -- the agent API ---------------------------------------------------------------------------


def test_fuzz_agent_api_bodies(api: Api) -> None:
    body_value = st.one_of(JSON_VALUE, st.integers(-(2**70), 2**70), st.just(api.genuine_blob))
    password_body = st.fixed_dictionaries(
        {},
        optional={"account": body_value, "version": body_value, "blob": body_value, "extra": body_value},
    )
    register_body = st.fixed_dictionaries(
        {}, optional={"registration_key": st.one_of(body_value, st.just(api.regkey)), "name": body_value}
    )

    @given(
        st.sampled_from(["password", "register", "advice", "undo", "raw"]),
        st.one_of(password_body, register_body, JSON_VALUE),
        ANY_TEXT,
        st.binary(max_size=64),
    )
    @example("password", {"account": "Administrator", "version": 2**63, "blob": "AAAA"}, "", b"")
    @example("password", {"account": "Administrator", "version": 7, "blob": "%%%"}, "", b"")
    @example("advice", {}, "9" * 63, b"")
    @example("advice", {}, "\ud800", b"")
    @example("undo", {}, "../../x", b"")
    @example("raw", {}, "", b'{"account": "' + b"[" * 10_000)
    def check(route: str, body: object, text: str, raw: bytes) -> None:
        count("test_fuzz_api-1")
        auth = {"Authorization": f"Bearer {api.device_token}"}
        c = api.client
        # JSON as a client may send it: lone surrogates as \ud800 escapes.
        content = json.dumps(body).encode("ascii")
        typed = {"Content-Type": "application/json"}
        if route == "password":
            response = c.post("/api/v1/agent/password", content=content, headers={**auth, **typed})
        elif route == "register":
            response = c.post("/api/v1/agent/register", content=content, headers=typed)
        elif route == "advice":
            version = quote(text.encode("utf-8", "surrogatepass"))  # invalid UTF-8 too
            response = c.get(f"/api/v1/agent/password?version={version}", headers=auth)
        elif route == "undo":
            response = c.delete(
                f"/api/v1/agent/password/{text.encode('utf-8', 'replace').hex()}", headers=auth
            )
        else:
            headers = {**auth, "Content-Type": "application/json"}
            response = c.post("/api/v1/agent/password", content=raw, headers=headers)
        _check_api_answer(response)

    check()
    record(
        AREA,
        "agent API bodies (/api/v1/agent)",
        RUN["test_fuzz_api-1"],
        "no 5xx; documented error codes",
        None,
    )


# -- the AWS JSON protocol -------------------------------------------------------------------


def _signed(api: Api, target: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> dict[str, str]:
    now = api.instance.clock.now().astimezone(UTC)
    amz_date = f"{now:%Y%m%dT%H%M%SZ}"
    headers = [
        ("host", "testserver"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-date", amz_date),
        ("x-amz-target", target),
        *(extra or []),
    ]
    names = tuple(sorted({k.lower() for k, _ in headers}))
    credential = sigv4.Credential(api.key_id, amz_date[:8], "us-east-1", "ds", names, "")
    request = sigv4.SignedRequest("POST", "/aws/ds", "", headers, body)
    signature = sigv4.sign(api.secret, credential, amz_date, request)
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={api.key_id}/{credential.scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {**dict(headers), "authorization": authorization}


def _check_aws_answer(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert status < 500, (status, response.text)  # type: ignore[attr-defined]
    assert response.headers.get("x-amzn-RequestId")  # type: ignore[attr-defined]
    if status >= 400:
        body = response.json()  # type: ignore[attr-defined]
        assert body.get("__type") in AWS_TYPES, body
        assert isinstance(body.get("Message"), str)


FIELDS = ["DirectoryId", "Limit", "NextToken", "Name", "SnapshotId"]


def test_fuzz_aws_json_protocol(api: Api) -> None:
    """Correctly signed requests: any operation (or none), any JSON body or bytes."""
    operations = sorted(OPERATIONS)

    @given(
        st.one_of(st.sampled_from(operations).map(lambda op: TARGET_PREFIX + op), ANY_TEXT),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["DirectoryId", "Limit", "NextToken", "Name", "SnapshotId"]), JSON_VALUE
            ),
            JSON_VALUE,
        ),
        st.one_of(st.none(), st.binary(max_size=64)),
    )
    @example(TARGET_PREFIX + "DescribeDirectories", {"Limit": 2**70}, None)
    @example(TARGET_PREFIX + "DescribeDirectories", {}, b"[" * 50_000)
    @example(TARGET_PREFIX + "DescribeSnapshots", {"NextToken": "\ud800"}, None)
    @example(TARGET_PREFIX + "DescribeDirectories", {"NextToken": "!!!"}, None)
    def check(target: str, body: object, raw: bytes | None) -> None:
        count("test_fuzz_api-2")
        try:
            content = raw if raw is not None else json.dumps(body).encode("utf-8", "surrogatepass")
            target.encode("ascii")
        except UnicodeEncodeError:
            return  # not sendable as a header
        headers = _signed(api, target, content)
        response = api.client.post("/aws/ds", content=content, headers=headers)
        _check_aws_answer(response)

    check()
    record(
        AREA,
        "AWS JSON protocol, signed requests (/aws/ds)",
        RUN["test_fuzz_api-2"],
        "no 5xx; documented AWS types",
        None,
    )


def test_fuzz_aws_validation() -> None:
    """The model validation alone: a dict back, or InvalidParameterException."""
    operations = sorted(OPERATIONS)

    @given(st.sampled_from(operations), JSON_VALUE)
    def check(operation: str, body: object) -> None:
        count("test_fuzz_api-3")
        try:
            out = validate(operation, body)
        except AwsError as exc:
            assert exc.aws_type == "InvalidParameterException", exc.aws_type
        else:
            assert isinstance(out, dict)

    check()
    record(
        AREA, "AWS request model validation", RUN["test_fuzz_api-3"], "only InvalidParameterException", None
    )


# -- SigV4 headers ---------------------------------------------------------------------------

AUTH_PART = st.one_of(
    st.sampled_from(
        [
            "Credential=ak_0123456789abcdef/20260101/us-east-1/ds/aws4_request",
            "SignedHeaders=content-type;host;x-amz-date",
            "Signature=" + "0" * 64,
            "Credential=//////",
            "SignedHeaders=",
            "Signature=",
            "=",
            "",
        ]
    ),
    ANY_TEXT,
)


SIGV4 = "AWS4-HMAC-SHA256 "
GOOD_PARTS = (
    "Credential=a/20260101/us-east-1/ds/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)
HEADERS = ["host", "x-amz-date", "content-type", "x-amz-target", "X-Amz-Foo", "authorization"]


def test_fuzz_sigv4_headers(api: Api) -> None:
    @given(
        st.one_of(
            st.none(),
            ANY_TEXT,
            st.lists(AUTH_PART, max_size=5).map(lambda p: "AWS4-HMAC-SHA256 " + ", ".join(p)),
        ),
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["host", "x-amz-date", "content-type", "x-amz-target", "X-Amz-Foo", "authorization"]
                ),
                ANY_TEXT,
            ),
            max_size=5,
        ),
        ANY_TEXT,
    )
    @example(
        "AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/ds/aws4_request, SignedHeaders=host, Signature="
        + "0" * 64,
        [("x-amz-date", "20269999T999999Z")],
        "",
    )
    def check(authorization: str | None, headers: list[tuple[str, str]], query: str) -> None:
        count("test_fuzz_api-4")
        try:
            credential = sigv4.parse_authorization(authorization)
        except sigv4.SignatureError as exc:
            assert exc.aws_type in AWS_TYPES and exc.message
        else:
            assert len(credential.signature) == 64
        lines = [*headers, *([("authorization", authorization)] if authorization is not None else [])]
        request = sigv4.SignedRequest("POST", "/aws/ds", query, lines, b"{}")
        try:
            sigv4.verify(request, service="ds", now=api.instance.clock.now(), secret_for=lambda _k: "s")
        except sigv4.SignatureError as exc:
            assert exc.aws_type in AWS_TYPES and exc.message

    check()
    record(
        AREA,
        "SigV4 Authorization and signed headers",
        RUN["test_fuzz_api-4"],
        "only documented SignatureError types",
        None,
    )


def test_an_audit_filter_beyond_a_database_integer_is_bad_input(api: Api) -> None:
    """Found by Schemathesis: ?event_id=2**63 overflowed the SQLite driver (500)."""
    token = apikeys.create(api.instance, "audit-reader", Role.READER, "test").token
    auth = {"Authorization": f"Bearer {token}"}
    for query in ("event_id=9223372036854775808", "event_id=-9223372036854775809"):
        response = api.client.get(f"/api/v1/audit?{query}", headers=auth)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "bad_input" and "out of range" in response.json()["message"]
    ok = api.client.get(
        "/api/v1/audit?event_id=9223372036854775807", headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 200 and ok.json() == []
