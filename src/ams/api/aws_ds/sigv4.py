"""AWS Signature Version 4 verification, written from the published algorithm.

The server never signs on anyone's behalf: it rebuilds the canonical request from what
arrived on the wire, derives the signing key from the caller's secret (the AMS API key
secret) and compares signatures in constant time. Nothing here knows about HTTP
frameworks; :class:`SignedRequest` carries the parts of a request the algorithm reads.

Refusals raise :class:`SignatureError` with the AWS error code a real service would use
(``MissingAuthenticationTokenException``, ``IncompleteSignatureException``,
``InvalidSignatureException``); the router turns them into JSON 1.1 answers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote

from ams import crypto

__all__ = [
    "ALGORITHM",
    "MAX_CLOCK_SKEW",
    "SINGLE_VALUED",
    "Credential",
    "SignatureError",
    "SignedRequest",
    "canonical_request",
    "parse_authorization",
    "sign",
    "signing_key",
    "string_to_sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=15)
_AMZ_DATE = re.compile(r"^(\d{8})T(\d{6})Z$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# host[:port]: a DNS name or IPv4 address, or an IPv6 literal in brackets (RFC 3986 3.2.2).
_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")

# Headers whose one value the server reads (or that decide what the request does): a second
# copy is refused, so what was signed and what is acted on can never be two different lines.
# Every ``x-amz-*`` header is treated the same way.
SINGLE_VALUED = frozenset({"authorization", "host", "content-type"})
# Headers that must be among the signed ones whenever the request carries them, besides
# ``host``, ``x-amz-date`` (always) and every ``x-amz-*`` header: AWS's services demand the
# same, and botocore signs them all.
_SIGNED_WHEN_PRESENT = frozenset({"content-type"})


class SignatureError(Exception):
    """A request whose signature cannot be accepted; ``aws_type`` names the AWS error."""

    def __init__(self, aws_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.aws_type = aws_type
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SignedRequest:
    method: str
    raw_path: str  # the path exactly as sent, still percent-encoded
    raw_query: str  # the query string exactly as sent, without "?"
    headers: Sequence[tuple[str, str]]  # every header line, names in any case
    body: bytes

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Credential:
    """The parsed ``Authorization`` header."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def parse_authorization(header: str | None) -> Credential:
    """Parse ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    if not header or not header.strip():
        raise SignatureError(
            "MissingAuthenticationTokenException",
            "the request is not signed: sign it with SigV4 using an AMS API key id and secret",
            403,
        )
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(
            "IncompleteSignatureException",
            f"the Authorization header must use {ALGORITHM} (SigV4); a bearer token is for /api/v1",
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key in fields:
            raise SignatureError("IncompleteSignatureException", "the Authorization header is garbled")
        fields[key] = value.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise SignatureError(
            "IncompleteSignatureException", f"the Authorization header lacks {', '.join(missing)}"
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise SignatureError(
            "IncompleteSignatureException",
            "the credential must read ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request",
        )
    access_key_id, date, region, service, _ = scope
    if not re.fullmatch(r"\d{8}", date):
        raise SignatureError("IncompleteSignatureException", "the credential scope date is not YYYYMMDD")
    signed = tuple(fields["SignedHeaders"].split(";"))
    if any(not _HEADER_NAME.match(h) for h in signed) or list(signed) != sorted(set(signed)):
        raise SignatureError(
            "IncompleteSignatureException",
            "SignedHeaders must be lower-case header names, sorted, separated by ';'",
        )
    if not re.fullmatch(r"[0-9a-f]{64}", fields["Signature"]):
        raise SignatureError("IncompleteSignatureException", "the signature must be 64 hex digits")
    return Credential(access_key_id, date, region, service, signed, fields["Signature"])


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, and consecutive slashes collapse, as AWS's signers do.
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def _canonical_query(raw_query: str) -> str:
    if not raw_query:
        return ""
    pairs = [pair.partition("=")[::2] for pair in raw_query.split("&")]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _header_value(value: str) -> str:
    return " ".join(value.split())


def payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_request(request: SignedRequest, signed_headers: Sequence[str]) -> str:
    lines = [
        request.method.upper(),
        quote(_remove_dot_segments(request.raw_path), safe="/~"),
        _canonical_query(request.raw_query),
    ]
    for name in signed_headers:
        values = request.header_values(name)
        lines.append(f"{name}:{','.join(_header_value(v) for v in values)}")
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(request.header("x-amz-content-sha256") or payload_hash(request.body))
    return "\n".join(lines)


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k_date = _hmac(("AWS4" + secret).encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def sign(secret: str, credential: Credential, amz_date: str, request: SignedRequest) -> str:
    """The hex signature of ``request`` under ``credential``'s scope."""
    canonical = canonical_request(request, credential.signed_headers)
    key = signing_key(secret, credential.date, credential.region, credential.service)
    return hmac.new(
        key, string_to_sign(amz_date, credential.scope, canonical).encode(), hashlib.sha256
    ).hexdigest()


def _parse_amz_date(value: str | None) -> datetime:
    match = _AMZ_DATE.match(value or "")
    if not match:
        raise SignatureError(
            "IncompleteSignatureException", "the request needs an X-Amz-Date header like 20260101T000000Z"
        )
    try:
        return datetime.strptime(value or "", "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is not a valid time") from None


def _single_valued(name: str) -> bool:
    return name in SINGLE_VALUED or name.startswith("x-amz-")


def _check_header_lines(request: SignedRequest) -> None:
    """Refuse a second copy of a header the server reads once, and a malformed Host."""
    counts: dict[str, int] = {}
    for name, _ in request.headers:
        lname = name.lower()
        counts[lname] = counts.get(lname, 0) + 1
    for name, count in sorted(counts.items()):
        if count > 1 and _single_valued(name):
            raise SignatureError(
                "IncompleteSignatureException",
                f"the request carries the {name} header {count} times: send it once",
            )
    host = request.header("host")
    if host is not None and not _HOST.match(host):
        raise SignatureError(
            "IncompleteSignatureException",
            "the Host header is not a host name with an optional port: send the endpoint's host",
        )


def _refuse_presigned(raw_query: str) -> None:
    # Names are compared decoded and without regard to case, so no spelling slips past.
    names = {name.lower() for name, _ in parse_qsl(raw_query, keep_blank_values=True)}
    if any(name.startswith("x-amz-") for name in names):
        raise SignatureError(
            "IncompleteSignatureException",
            "query-string (presigned) signatures and X-Amz-* query parameters are not accepted here: "
            "sign the Authorization header",
        )


def _check_coverage(request: SignedRequest, credential: Credential) -> None:
    """Every header that changes what the request means must be signed."""
    for needed in ("host", "x-amz-date"):
        if needed not in credential.signed_headers:
            raise SignatureError(
                "IncompleteSignatureException", f"the signature must cover the {needed} header"
            )
    present = sorted({name.lower() for name, _ in request.headers})
    unsigned = [
        name
        for name in present
        if (name.startswith("x-amz-") or name in _SIGNED_WHEN_PRESENT)
        and name not in credential.signed_headers
    ]
    if unsigned:
        shown = ", ".join(name[:64] for name in unsigned[:5]) + (", …" if len(unsigned) > 5 else "")
        raise SignatureError(
            "IncompleteSignatureException",
            f"the signature must cover every X-Amz-* header and Content-Type sent: {shown} "
            "not signed; add them to SignedHeaders",
        )
    for name in credential.signed_headers:
        if not request.header_values(name):
            raise SignatureError("IncompleteSignatureException", f"signed header {name!r} is missing")


def verify(
    request: SignedRequest,
    *,
    service: str,
    now: datetime,
    secret_for: Callable[[str], str],
) -> Credential:
    """Check the request's SigV4 signature; return the credential it was signed with.

    ``secret_for(access_key_id)`` returns the caller's secret, or raises for an unknown
    key (its exception passes through). Checks, in order: no X-Amz-* query parameters
    (presigned requests), no second copy of a header read once (``Authorization``, ``Host``,
    ``Content-Type``, any ``X-Amz-*``), a well-formed Host, a well-formed Authorization
    header, the signed headers cover ``host``, ``x-amz-date``, ``content-type`` and every
    ``x-amz-*`` header sent, the scope's service and date, the clock skew (at most 15
    minutes either way), the body hash, the signature.
    """
    _refuse_presigned(request.raw_query)
    _check_header_lines(request)
    credential = parse_authorization(request.header("authorization"))
    _check_coverage(request, credential)
    if credential.service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"the credential scope names service {credential.service!r}; this endpoint is {service!r}",
        )
    amz_date = request.header("x-amz-date") or ""
    signed_at = _parse_amz_date(amz_date)
    if credential.date != amz_date[:8]:
        raise SignatureError(
            "InvalidSignatureException", "the credential scope date does not match X-Amz-Date"
        )
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: X-Amz-Date {amz_date} is more than 15 minutes from the server time "
            f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}; correct the client's clock",
        )
    declared = request.header("x-amz-content-sha256")
    if declared is not None and not crypto.constant_time_equal(declared, payload_hash(request.body)):
        raise SignatureError(
            "InvalidSignatureException",
            "X-Amz-Content-SHA256 does not match the body: unsigned or altered payloads are refused",
        )
    secret = secret_for(credential.access_key_id)
    expected = sign(secret, credential, amz_date, request)
    if not crypto.constant_time_equal(expected, credential.signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided: "
            "check the secret access key (the AMS API key secret) and the signing method",
        )
    return credential
