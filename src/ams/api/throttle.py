"""The REST answer of a throttled failed authentication: 429 with ``Retry-After``.

The AWS endpoint answers the same in its own shape (``ams.api.aws_ds.router``); the rules
are in ``ams.security.throttle``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ams.errors import TooManyRequests

__all__ = ["answer", "install"]


def answer(exc: TooManyRequests) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def too_many_requests(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooManyRequests)
    return answer(exc)


def install(app: FastAPI) -> None:
    """Register the answer; it takes precedence over the one for every AMSError."""
    app.add_exception_handler(TooManyRequests, too_many_requests)
