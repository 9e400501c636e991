"""What offsite copies and remote reads share: ``s3://`` locations, clients, failures.

A client is made with boto3 for one bucket: the endpoint of an S3-compatible service (or
AWS itself), the region, and either credentials given to AMS (sealed in the database,
:mod:`ams.backup.offsite`) or the standard AWS chain (environment, profile, instance role).
Every failure of the object storage becomes one line from :mod:`ams.errors` that names the
target and what to do; the secret never appears in it (botocore never puts it in a message,
and nothing here formats it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ams.errors import (
    AMSError,
    BadInput,
    OffsiteAccessDenied,
    OffsiteBucketMissing,
    OffsiteCopyFailed,
    OffsiteCredentialsMissing,
    OffsiteLockUnavailable,
    OffsiteObjectNotFound,
    OffsiteUnreachable,
)

__all__ = ["Credentials", "Location", "S3Target", "failure", "make_client", "parse_url"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Seconds: a dead endpoint is named within about a minute, never a hung service thread.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class Location:
    """``s3://BUCKET/KEY-OR-PREFIX``."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_url(url: str, *, option: str = "the s3:// URL", prefix: bool = False) -> Location:
    """A checked ``s3://BUCKET/PATH``; with ``prefix`` the path is a folder ("" or ending in "/")."""
    if not url.startswith("s3://"):
        raise BadInput(f"{option} must look like s3://BUCKET/PREFIX")
    bucket, _, path = url[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise BadInput(
            f"{option}: {bucket[:70]!r} is not a bucket name (3-63 lower-case letters, digits, dots, hyphens)"
        )
    if _CONTROL.search(path) or len(path) > 900:
        raise BadInput(f"{option}: the path holds control characters or is too long")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadInput(f"{option}: the path may not hold . or .. parts")
    if prefix:
        return Location(bucket, "".join(p + "/" for p in parts))
    if not parts or path.endswith("/"):
        raise BadInput(f"{option} must name an object: s3://BUCKET/PREFIX/ams-….amsbak")
    return Location(bucket, "/".join(parts))


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never the secret, whatever prints this
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key='***')"


@dataclass(frozen=True)
class S3Target:
    """Where to connect: a target's name (for messages), its endpoint, region and credentials."""

    label: str
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    credentials: Credentials | None = None  # None: the standard AWS chain


def make_client(where: S3Target) -> Any:
    """A boto3 S3 client; :class:`OffsiteCredentialsMissing` when no credentials are found."""
    import boto3
    from botocore.config import Config

    if where.credentials is not None:
        session = boto3.session.Session(
            aws_access_key_id=where.credentials.access_key_id,
            aws_secret_access_key=where.credentials.secret_access_key,
            region_name=where.region,
        )
    else:
        session = boto3.session.Session(region_name=where.region)
        if session.get_credentials() is None:
            raise OffsiteCredentialsMissing(
                f"{where.label}: no credentials for the object storage: give --access-key-id with the secret "
                "on standard input, or set up the AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, an instance role)"
            )
    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 3, "mode": "standard"},
        # Checksums are sent where AMS asks for them (SHA-256 of every part), not the SDK's
        # default CRC on every request, which not every S3-compatible service accepts.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if where.endpoint_url else None,
    )
    region = where.region or session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=where.endpoint_url, region_name=region, config=config)


_PERMISSIONS = {
    "bucket": "s3:ListBucket",
    "put": "s3:PutObject",
    "get": "s3:GetObject",
    "head": "s3:GetObject",
    "delete": "s3:DeleteObject",
    "list": "s3:ListBucket",
    "lock": "s3:GetBucketObjectLockConfiguration",
    "retention": "s3:PutObjectRetention",
    "uploads": "s3:ListBucketMultipartUploads",
    "abort": "s3:AbortMultipartUpload",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
}


def failure(exc: BaseException, where: S3Target, action: str, *, key: str | None = None) -> AMSError:
    """The AMS error for a failure of boto3 while doing ``action`` (a key of _PERMISSIONS)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    label = where.label
    if isinstance(exc, AMSError):
        return exc
    if isinstance(exc, NoCredentialsError):
        return OffsiteCredentialsMissing(f"{label}: {OffsiteCredentialsMissing.summary}")
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return OffsiteUnreachable(
            f"{label}: the object storage did not answer in time ({type(exc).__name__}); "
            "check the endpoint and the network, the next run retries"
        )
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        where_to = where.endpoint_url or "the AWS endpoint"
        return OffsiteUnreachable(
            f"{label}: {where_to} could not be reached; check --endpoint-url and the network, "
            "the next run retries"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIAL_CODES:
            return OffsiteAccessDenied(
                f"{label}: the object storage refused the credentials ({code}): check the access key id and "
                "its secret (add the target again with --access-key-id), or the AWS chain's"
            )
        if code in ("NoSuchBucket",) or (action == "bucket" and (code == "404" or status == 404)):
            return OffsiteBucketMissing(
                f"{label}: the bucket {where.bucket} does not exist: create it, or correct the target's "
                f"s3:// URL"
            )
        if code == "ObjectLockConfigurationNotFoundError":
            return OffsiteLockUnavailable(
                f"{label}: the bucket {where.bucket} has no Object Lock, which --lock-days needs: create "
                f"a bucket "
                "with Object Lock enabled, or add the target without --lock-days"
            )
        if code in ("NoSuchKey", "NoSuchVersion") or (code == "404" or status == 404):
            name = f"s3://{where.bucket}/{key}" if key else "the object"
            return OffsiteObjectNotFound(
                f"{label}: {name} is not in the bucket (deleted, or never copied): list what it holds with "
                "`ams backup list --target NAME`"
            )
        if code in ("AccessDenied", "AllAccessDisabled", "Forbidden", "403") or status == 403:
            permission = _PERMISSIONS.get(action, action)
            return OffsiteAccessDenied(
                f"{label}: access denied for {permission} on {where.bucket}: allow it in the access key's "
                "policy (or the bucket's)"
            )
        return OffsiteCopyFailed(
            f"{label}: the object storage answered {code or status} to {_PERMISSIONS.get(action, action)}: "
            f"{str(error.get('Message', ''))[:200]}"
        )
    if isinstance(exc, BotoCoreError | OSError):
        return OffsiteUnreachable(
            f"{label}: the transfer broke off ({type(exc).__name__}); check the endpoint and the network, "
            "the next run retries"
        )
    return OffsiteCopyFailed(f"{label}: {type(exc).__name__}")
