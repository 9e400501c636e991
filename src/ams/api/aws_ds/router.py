"""``POST /aws/ds`` (and ``POST /`` with a DirectoryService target): the AWS endpoint.

One request runs: read the body (at most 1 MiB), verify the SigV4 signature against the
AMS API key named as access key id, check the key's role, parse and validate the JSON
body against the model, call the operation. Every answer, error or not, carries an
``x-amzn-RequestId``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, NoReturn

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ams import apikeys, audit
from ams.api.aws_ds import sigv4
from ams.api.aws_ds.operations import HANDLERS, READ_ONLY, Call
from ams.api.aws_ds.protocol import (
    TARGET_PREFIX,
    AwsError,
    aws_error_from,
    error_response,
    json_response,
    new_request_id,
)
from ams.api.aws_ds.validation import OPERATIONS, validate
from ams.apikeys import Role
from ams.errors import AMSError, TooManyRequests
from ams.instance import Instance
from ams.security import throttle

__all__ = ["ENDPOINT_PATH", "router"]

ENDPOINT_PATH = "/aws/ds"
SERVICE = "ds"
MAX_BODY = 1024 * 1024
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")
_log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise AwsError("SerializationException", "the request body is larger than 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(ENDPOINT_PATH)
@router.post(ENDPOINT_PATH + "/")
@router.post("/")
async def directory_service(request: Request) -> Response:
    request_id = new_request_id()
    try:
        body = await _read_body(request)
    except AwsError as exc:
        return error_response(exc, request_id)
    signed = sigv4.SignedRequest(
        method=request.method,
        raw_path=request.scope.get("raw_path", request.url.path.encode()).decode("latin-1"),
        raw_query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
        body=body,
    )
    instance: Instance = request.app.state.instance
    address = request.client.host if request.client else None
    return await run_in_threadpool(handle, instance, signed, request_id, address)


def handle(
    instance: Instance, signed: sigv4.SignedRequest, request_id: str, address: str | None = None
) -> Response:
    """Answer one signed request; every failure becomes the model's error shape."""
    try:
        return json_response(_dispatch(instance, signed, address), request_id)
    except TooManyRequests as exc:
        # Failed authentication throttled (ams.security.throttle): botocore retries a
        # ThrottlingException with backoff, and so does the aws command.
        response = error_response(AwsError("ThrottlingException", exc.message, 429), request_id)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except AwsError as exc:
        return error_response(exc, request_id)
    except sigv4.SignatureError as exc:
        return error_response(AwsError(exc.aws_type, exc.message, exc.status), request_id)
    except AMSError as exc:
        return error_response(aws_error_from(exc), request_id)
    except Exception:
        _log.exception("AWS Directory Service request %s failed", request_id)
        return error_response(
            AwsError("ServiceException", f"an internal error occurred; report request id {request_id}"),
            request_id,
        )


def _operation(signed: sigv4.SignedRequest) -> str:
    targets = signed.header_values("x-amz-target")
    if len(targets) > 1:  # sigv4.verify refuses it first; the operation is never a guess
        raise AwsError("SerializationException", "the request carries X-Amz-Target more than once")
    target = targets[0] if targets else ""
    operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    if operation not in OPERATIONS:
        shown = target[:100] or "none"
        raise AwsError(
            "UnknownOperationException",
            f"X-Amz-Target {shown!r} is not an operation AMS serves: see docs/aws-compat.md",
        )
    return operation


def _dispatch(instance: Instance, signed: sigv4.SignedRequest, address: str | None) -> dict[str, Any]:
    found: dict[str, apikeys.ApiKeyInfo] = {}
    secrets: dict[str, str] = {}

    def secret_for(key_id: str) -> str:
        key = next((k for k in apikeys.list_keys(instance) if k.id == key_id), None)
        if key is None:
            _refuse(
                instance,
                address,
                key_id,
                None,
                "unknown access key",
                sigv4.SignatureError(
                    "UnrecognizedClientException",
                    "the access key id is not an active AMS API key: create one with "
                    "`ams apikey create --role admin` and use its id and secret",
                ),
            )
        found["key"] = key
        secrets[key_id] = apikeys.secret_of(instance, key_id)  # MasterKeyLocked while locked
        return secrets[key_id]

    try:
        credential = sigv4.verify(signed, service=SERVICE, now=instance.clock.now(), secret_for=secret_for)
    except sigv4.SignatureError as exc:
        if exc.aws_type == "InvalidSignatureException" and "key" in found:
            _refuse(instance, address, found["key"].id, found["key"].id, "bad signature", exc)
        raise
    if not _REGION.match(credential.region):
        raise sigv4.SignatureError(
            "IncompleteSignatureException", "the credential scope region must look like us-east-1"
        )
    key = found["key"]
    operation = _operation(signed)
    if operation not in READ_ONLY and not key.role.allows(Role.ADMIN):
        raise AwsError(
            "AccessDeniedException",
            f"API key {key.id} has the {key.role} role, which may call Describe* and Get* only: "
            f"{operation} needs an admin key",
        )
    try:
        payload = json.loads(signed.body or b"{}")
    except (ValueError, RecursionError):
        raise AwsError("SerializationException", "the request body is not valid JSON") from None
    handler = HANDLERS[operation]
    call = Call(instance, key.id, secrets[key.id], credential.region)
    return handler(call, validate(operation, payload))


def _refuse(
    instance: Instance,
    address: str | None,
    key_id: str,
    target: str | None,
    reason: str,
    error: sigv4.SignatureError,
) -> NoReturn:
    """Record (or count, past the limit: 429) a failed signature, then raise ``error``."""
    throttle.refuse(
        instance,
        throttle.AuthKind.SIGV4,
        address=address,
        key_id=key_id,
        event=audit.Event.API_AUTH_FAILED,
        target=target,
        details={"reason": reason, "endpoint": ENDPOINT_PATH},
        error=error,
    )
