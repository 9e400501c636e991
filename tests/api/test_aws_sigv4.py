"""SigV4 verification against signatures made by botocore's own signer (the real peer)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ams.api.aws_ds import sigv4
from ams.api.aws_ds.sigv4 import SignatureError, SignedRequest

KEY_ID = "ak_0123456789abcdef0123456789abcdef"
SECRET = "s3cr3t-Secret-Value/with+chars="
BODY = json.dumps({"DirectoryId": "d-0123456789"}).encode()


def botocore_signed(
    url: str = "http://127.0.0.1:8765/aws/ds",
    *,
    body: bytes = BODY,
    region: str = "us-east-1",
    service: str = "ds",
    secret: str = SECRET,
    headers: dict[str, str] | None = None,
    extra_wire_headers: list[tuple[str, str]] | None = None,
) -> tuple[SignedRequest, datetime]:
    """Sign with botocore, then describe the request as it reaches the server."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "X-Amz-Target": "DirectoryService_20150416.DescribeSnapshots",
            "Content-Type": "application/x-amz-json-1.1",
            **(headers or {}),
        },
    )
    SigV4Auth(Credentials(KEY_ID, secret), service, region).add_auth(request)
    parts = urlsplit(url)
    wire = [("Host", parts.netloc)] + [(k, v) for k, v in request.headers.items()]
    wire += extra_wire_headers or []
    signed_at = datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return SignedRequest("POST", parts.path or "/", parts.query, wire, body), signed_at


def secret_for(key_id: str) -> str:
    if key_id != KEY_ID:
        raise LookupError(key_id)
    return SECRET


def verify(request: SignedRequest, now: datetime) -> sigv4.Credential:
    return sigv4.verify(request, service="ds", now=now, secret_for=secret_for)


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("http://127.0.0.1:8765/aws/ds", "us-east-1"),
        ("http://127.0.0.1:8765/", "eu-west-1"),
        ("http://localhost/aws/ds", "ap-southeast-2"),
        ("http://127.0.0.1:8765/aws/./x/../ds", "us-west-2"),
        ("http://127.0.0.1:8765/aws/ds?b=2&a=1&a=0", "us-east-1"),
        ("http://127.0.0.1:8765/aws/d%20s", "us-east-1"),
    ],
)
def test_botocore_signatures_verify(url: str, region: str) -> None:
    request, signed_at = botocore_signed(url, region=region)
    credential = verify(request, signed_at)
    assert credential.access_key_id == KEY_ID
    assert credential.region == region
    assert credential.service == "ds"


def test_our_signature_equals_botocores() -> None:
    request, signed_at = botocore_signed(headers={"X-Custom": "  a   b  "})
    credential = sigv4.parse_authorization(request.header("authorization"))
    assert "x-custom" in credential.signed_headers
    ours = sigv4.sign(SECRET, credential, signed_at.strftime("%Y%m%dT%H%M%SZ"), request)
    assert ours == credential.signature


def test_empty_body_and_declared_payload_hash_verify() -> None:
    request, signed_at = botocore_signed(body=b"")
    verify(request, signed_at)
    declared = sigv4.payload_hash(BODY)
    request, signed_at = botocore_signed(headers={"X-Amz-Content-SHA256": declared})
    verify(request, signed_at)


def test_signing_key_derivation_matches_the_published_example() -> None:
    # The example of AWS's "Deriving the signing key" documentation.
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def _expect(aws_type: str, request: SignedRequest, now: datetime) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify(request, now)
    assert info.value.aws_type == aws_type
    assert SECRET not in info.value.message
    return info.value


def test_altered_body_is_refused() -> None:
    request, signed_at = botocore_signed()
    altered = SignedRequest(request.method, request.raw_path, request.raw_query, request.headers, b"{}")
    error = _expect("InvalidSignatureException", altered, signed_at)
    assert "does not match" in error.message


def test_altered_signed_header_is_refused() -> None:
    request, signed_at = botocore_signed()
    headers = [
        (k, "DirectoryService_20150416.DeleteSnapshot" if k.lower() == "x-amz-target" else v)
        for k, v in request.headers
    ]
    altered = SignedRequest(request.method, request.raw_path, request.raw_query, headers, request.body)
    _expect("InvalidSignatureException", altered, signed_at)


def test_wrong_secret_is_refused() -> None:
    request, signed_at = botocore_signed(secret="not-the-secret")
    _expect("InvalidSignatureException", request, signed_at)


def test_body_hash_mismatch_is_refused() -> None:
    request, signed_at = botocore_signed(headers={"X-Amz-Content-SHA256": sigv4.payload_hash(b"other")})
    error = _expect("InvalidSignatureException", request, signed_at)
    assert "X-Amz-Content-SHA256" in error.message
    unsigned, signed_at = botocore_signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    _expect("InvalidSignatureException", unsigned, signed_at)


@pytest.mark.parametrize(("shift", "ok"), [(14, True), (-14, True), (16, False), (-16, False)])
def test_clock_skew_over_15_minutes_is_refused(shift: int, ok: bool) -> None:
    request, signed_at = botocore_signed()
    now = signed_at + timedelta(minutes=shift)
    if ok:
        verify(request, now)
    else:
        assert "15 minutes" in _expect("InvalidSignatureException", request, now).message


def test_missing_authorization_is_refused() -> None:
    request, signed_at = botocore_signed()
    stripped = [(k, v) for k, v in request.headers if k.lower() != "authorization"]
    bare = SignedRequest(request.method, request.raw_path, request.raw_query, stripped, request.body)
    assert _expect("MissingAuthenticationTokenException", bare, signed_at).status == 403


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ak_x.y",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/ds/aws4_request",
        "AWS4-HMAC-SHA256 Credential=ak/2026/us-east-1/ds/aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/ds, SignedHeaders=host;x-amz-date, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/ds/aws4_request, SignedHeaders=x-amz-date;host, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/ds/aws4_request, "
        "SignedHeaders=host;host;x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/ds/aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=zz",
    ],
)
def test_garbled_authorization_is_refused(authorization: str) -> None:
    request, signed_at = botocore_signed()
    headers = [(k, authorization if k.lower() == "authorization" else v) for k, v in request.headers]
    garbled = SignedRequest(request.method, request.raw_path, request.raw_query, headers, request.body)
    _expect("IncompleteSignatureException", garbled, signed_at)


def test_signature_must_cover_host_and_date() -> None:
    request, signed_at = botocore_signed()
    auth = request.header("authorization") or ""
    narrowed = auth.replace(
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target", "SignedHeaders=x-amz-date"
    )
    assert narrowed != auth
    headers = [(k, narrowed if k.lower() == "authorization" else v) for k, v in request.headers]
    weak = SignedRequest(request.method, request.raw_path, request.raw_query, headers, request.body)
    assert "host" in _expect("IncompleteSignatureException", weak, signed_at).message


def test_other_service_scope_is_refused() -> None:
    request, signed_at = botocore_signed(service="s3")
    assert "'s3'" in _expect("InvalidSignatureException", request, signed_at).message


def test_unknown_key_error_passes_through() -> None:
    request, signed_at = botocore_signed()
    auth = (request.header("authorization") or "").replace(KEY_ID, "ak_unknown")
    headers = [(k, auth if k.lower() == "authorization" else v) for k, v in request.headers]
    with pytest.raises(LookupError):
        verify(
            SignedRequest(request.method, request.raw_path, request.raw_query, headers, request.body),
            signed_at,
        )


def test_presigned_query_is_refused() -> None:
    request, signed_at = botocore_signed("http://127.0.0.1:8765/aws/ds?X-Amz-Signature=abc")
    _expect("IncompleteSignatureException", request, signed_at)


def _signed_over(headers: dict[str, str], extra: list[tuple[str, str]]) -> tuple[SignedRequest, datetime]:
    """Sign over ``headers`` only (botocore signs what the request holds), then add ``extra``."""
    request = AWSRequest(method="POST", url="http://127.0.0.1:8765/aws/ds", data=BODY, headers=headers)
    SigV4Auth(Credentials(KEY_ID, SECRET), "ds", "us-east-1").add_auth(request)
    wire = [("Host", "127.0.0.1:8765"), *request.headers.items(), *extra]
    signed_at = datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return SignedRequest("POST", "/aws/ds", "", wire, BODY), signed_at


TARGET = ("X-Amz-Target", "DirectoryService_20150416.DescribeSnapshots")
JSON_TYPE = ("Content-Type", "application/x-amz-json-1.1")


@pytest.mark.parametrize(
    ("signed", "unsigned", "named"),
    [
        ({}, [TARGET], "x-amz-target"),
        ({}, [TARGET, JSON_TYPE], "content-type, x-amz-target"),
        (dict([TARGET]), [JSON_TYPE], "content-type"),
        (dict([TARGET, JSON_TYPE]), [("X-Amz-Security-Token", "t")], "x-amz-security-token"),
        (
            dict([TARGET, JSON_TYPE]),
            [("x-amz-content-sha256", sigv4.payload_hash(BODY))],
            "x-amz-content-sha256",
        ),
        (dict([TARGET, JSON_TYPE]), [("X-AMZ-Anything", "1")], "x-amz-anything"),
    ],
)
def test_every_x_amz_header_and_content_type_must_be_signed(
    signed: dict[str, str], unsigned: list[tuple[str, str]], named: str
) -> None:
    request, signed_at = _signed_over(signed, unsigned)
    message = _expect("IncompleteSignatureException", request, signed_at).message
    assert f"{named} not signed" in message


def test_headers_aws_leaves_unsigned_may_stay_unsigned() -> None:
    # botocore never signs these (nor does the aws command); X-Amzn-* is not X-Amz-*.
    extra = [("User-Agent", "Boto3/1"), ("X-Amzn-Trace-Id", "Root=1"), ("Accept-Encoding", "identity")]
    request, signed_at = _signed_over(dict([TARGET, JSON_TYPE]), extra)
    assert verify(request, signed_at).access_key_id == KEY_ID


@pytest.mark.parametrize(
    "duplicate",
    [
        ("X-Amz-Target", "DirectoryService_20150416.DeleteDirectory"),
        ("x-amz-target", "DirectoryService_20150416.DescribeSnapshots"),
        ("Content-Type", "application/json"),
        ("Host", "127.0.0.1:8765"),
        ("X-Amz-Date", "20260101T000000Z"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=x"),
    ],
)
def test_a_second_copy_of_a_header_read_once_is_refused(duplicate: tuple[str, str]) -> None:
    request, signed_at = botocore_signed(extra_wire_headers=[duplicate])
    message = _expect("IncompleteSignatureException", request, signed_at).message
    assert f"the {duplicate[0].lower()} header 2 times" in message


def test_other_repeated_signed_headers_fold_as_aws_does() -> None:
    request, signed_at = _signed_over({**dict([TARGET, JSON_TYPE]), "X-Custom": "a"}, [])
    # Two lines of a header signed once: the canonical value becomes "a,b", so it no longer verifies.
    doubled = SignedRequest(
        request.method, request.raw_path, request.raw_query, [*request.headers, ("X-Custom", "b")], BODY
    )
    _expect("InvalidSignatureException", doubled, signed_at)


@pytest.mark.parametrize("host", ["", "a b", "evil.example, 127.0.0.1:8765", "x/y", "u@h", "h:99999999"])
def test_a_host_that_is_not_a_host_is_refused(host: str) -> None:
    request, signed_at = botocore_signed()
    headers = [(k, host if k.lower() == "host" else v) for k, v in request.headers]
    odd = SignedRequest(request.method, request.raw_path, request.raw_query, headers, request.body)
    assert "Host" in _expect("IncompleteSignatureException", odd, signed_at).message


@pytest.mark.parametrize("host", ["localhost", "ams_1:8080", "[::1]:8765", "10.0.0.1", "ams.example."])
def test_host_names_as_clients_send_them_verify(host: str) -> None:
    request, signed_at = botocore_signed(f"http://{host}/aws/ds")
    assert verify(request, signed_at).access_key_id == KEY_ID


@pytest.mark.parametrize(
    "query",
    [
        "x-amz-signature=abc",
        "X-Amz-Credential=x",
        "X%2DAmz%2DAlgorithm=AWS4-HMAC-SHA256",
        "a=1&X-Amz-Expires=60",
        "X-Amz-Security-Token",
    ],
)
def test_x_amz_query_parameters_are_refused(query: str) -> None:
    request, signed_at = botocore_signed(f"http://127.0.0.1:8765/aws/ds?{query}")
    assert "presigned" in _expect("IncompleteSignatureException", request, signed_at).message
