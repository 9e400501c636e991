"""The AWS JSON 1.1 envelope: targets, answers, error shapes.

A request is ``POST`` with ``X-Amz-Target: DirectoryService_20150416.<Operation>`` and a
JSON object body; an answer is ``application/x-amz-json-1.1`` with the model's member
names, timestamps as epoch seconds, and an ``x-amzn-RequestId`` header. Errors are
``{"__type": ..., "Message": ...}``: status 400 for client errors, 500 for
ServiceException.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response

from ams.errors import (
    AlreadyExists,
    AMSError,
    BadInput,
    Conflict,
    MasterKeyLocked,
    NotFound,
    PermissionDenied,
    SnapshotLimitExceeded,
)

__all__ = [
    "CONTENT_TYPE",
    "TARGET_PREFIX",
    "AwsError",
    "aws_error_from",
    "epoch",
    "error_response",
    "json_response",
    "new_request_id",
]

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "DirectoryService_20150416."

# AMS base classes -> the model's shape, for errors that do not name one (``aws_type``).
_FALLBACK: tuple[tuple[type[AMSError], str], ...] = (
    (BadInput, "InvalidParameterException"),
    (NotFound, "EntityDoesNotExistException"),
    (PermissionDenied, "AccessDeniedException"),
    (Conflict, "ClientException"),
    (AlreadyExists, "ClientException"),
)


class AwsError(Exception):
    """An answer in the model's error shape."""

    def __init__(self, aws_type: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.aws_type = aws_type
        self.message = message
        self.status = status if status is not None else (500 if aws_type == "ServiceException" else 400)


def aws_error_from(exc: AMSError) -> AwsError:
    """The AWS shape for an AMS error: its ``aws_type``, else by family, else ServiceException."""
    if isinstance(exc, MasterKeyLocked):
        return AwsError("ServiceException", exc.message)
    aws_type = getattr(exc, "aws_type", None)
    if not isinstance(aws_type, str):
        aws_type = next((t for base, t in _FALLBACK if isinstance(exc, base)), "ServiceException")
    return AwsError(aws_type, _aws_message(exc))


def _aws_message(exc: AMSError) -> str:
    """The message in the API's own terms where the AMS one names `ams` commands."""
    if isinstance(exc, SnapshotLimitExceeded):
        which = f"Directory {exc.directory_id}" if exc.directory_id else "The directory"
        return (
            f"{which} has reached its limit of {exc.limit} manual snapshots: delete one with "
            "DeleteSnapshot, then call CreateSnapshot again"
        )
    return exc.message


def new_request_id() -> str:
    return str(uuid.uuid4())


def epoch(value: datetime | None) -> float | None:
    """A timestamp as the JSON protocols carry it: seconds since the epoch."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp(), 3)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def json_response(body: dict[str, Any], request_id: str, status: int = 200) -> Response:
    return Response(
        content=json.dumps(_drop_none(body), separators=(",", ":")),
        status_code=status,
        media_type=CONTENT_TYPE,
        headers={"x-amzn-RequestId": request_id},
    )


def error_response(error: AwsError, request_id: str) -> Response:
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.aws_type}
    return Response(
        content=json.dumps({"__type": error.aws_type, "Message": error.message}),
        status_code=error.status,
        media_type=CONTENT_TYPE,
        headers=headers,
    )
