"""The FastAPI application of ``ams serve``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import Receive, Scope, Send

from ams import __version__
from ams.api import aws_ds, limits, throttle
from ams.api.fastpath import FastRoutes
from ams.api.metrics import Metrics, MetricsMiddleware
from ams.api.routes import (
    agent,
    apikeys,
    audit,
    backup_targets,
    backups,
    certificates,
    devices,
    directories,
    health,
    status,
)
from ams.errors import (
    AMSError,
    AuthenticationRequired,
    BadInput,
    DirectoryUnavailable,
    InternalError,
    MasterKeyLocked,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
    TooManyRequests,
)
from ams.instance import Instance

__all__ = ["create_app"]


def _error_response(exc: AMSError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(exc, AuthenticationRequired):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, MasterKeyLocked):
        headers["Retry-After"] = "60"
    if isinstance(exc, DirectoryUnavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RequestTooLarge):
        # The rest of the refused body may still be on its way: the connection ends here.
        headers["Connection"] = "close"
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


def _render_error(exc: AMSError) -> JSONResponse:
    """An AMS error as the application's exception handlers answer it (ams.api.fastpath)."""
    return throttle.answer(exc) if isinstance(exc, TooManyRequests) else _error_response(exc)


def _from_http_exception(request: Request, exc: HTTPException) -> AMSError:
    """Starlette's and FastAPI's own refusals, as AMS errors (the documented shape)."""
    if exc.status_code == 404:
        return NotFound(
            "no route has this path: the API is under /api/v1 (docs/operations.md lists the routes)"
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(f"this path does not take {request.method}: use {allowed}")
    if exc.status_code == 413:
        return limits.too_large(request.scope.get(MAX_BODY_SIZE_SCOPE_KEY))
    if exc.status_code == 400:
        # FastAPI's "There was an error parsing the body": not UTF-8, or nested past the parser.
        return BadInput("the request body is not JSON that can be read: send UTF-8 JSON (RFC 8259)")
    if exc.status_code in (401, 403):
        return (AuthenticationRequired if exc.status_code == 401 else PermissionDenied)(str(exc.detail))
    return BadInput(str(exc.detail)) if exc.status_code < 500 else InternalError()


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Background jobs that run while the app serves, stopped when it stops; in one process
    only, the jobs leader (ams.leader), whatever the number of workers.

    Directories (issue 5): the restore worker and the daily automatic snapshots, one thread
    (ams.directory.background.DirectoryJobs); tests drive its ``tick()`` instead. Backups
    (issue 4): the scheduled backup thread (ams.backup.scheduler.BackupScheduler). Issue 18:
    audit retention and the failed-authentication summaries (ams.audit_retention).
    """
    from ams.audit_retention import AuditJobs
    from ams.backup.scheduler import BackupScheduler
    from ams.directory.background import DirectoryJobs
    from ams.leader import JobsLeader

    instance = app.state.instance
    directory_jobs = app.state.directory_jobs = DirectoryJobs(instance)
    backup_scheduler = app.state.backup_scheduler = BackupScheduler(instance)
    audit_jobs = app.state.audit_jobs = AuditJobs(instance)
    started: list[DirectoryJobs | BackupScheduler | AuditJobs] = []

    def start_jobs() -> None:
        app.state.metrics.leading = True
        for jobs in (directory_jobs, backup_scheduler, audit_jobs):
            jobs.start()
            started.append(jobs)

    leader = app.state.jobs_leader = JobsLeader(instance, start_jobs)
    await asyncio.to_thread(leader.start)
    # Everything loaded so far (the application, SQLAlchemy, the instance) lives as long as
    # the process: kept out of the garbage collector's full passes, so that a pass, when one
    # comes, walks only what requests made (a pause in some request's latency otherwise).
    gc.freeze()
    try:
        yield
    finally:
        await asyncio.to_thread(leader.stop)
        for jobs in reversed(started):
            await asyncio.to_thread(jobs.stop)


class _AMSApp(FastAPI):
    """The FastAPI application, with the hot path's routes answered in front of its own
    stack (ams.api.fastpath.FastRoutes), which answers everything else."""

    fast_routes: FastRoutes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast_routes(scope, receive, send)


def create_app(instance: Instance) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    app = FastAPIOffline(
        title="AMS",
        version=__version__,
        description="Access Manager Service: device administrator passwords, directories, recovery.",
        # GET /docs: Swagger UI from the fastapi-offline package's own files, never a CDN; no
        # online validator badge (it would send the document's URL to a third party).
        docs_url="/docs",
        redoc_url=None,
        static_url="/docs/static",
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=_lifespan,
        # Body limits are declared on the routers and routes (ams.api.limits); this one runs
        # before every route, before authentication.
        dependencies=[Depends(limits.refuse_oversized)],
    )
    app.state.instance = instance
    app.state.metrics = Metrics(instance)
    # fastapi-offline builds a plain FastAPI; _AMSApp differs only by its __call__.
    app.__class__ = _AMSApp
    assert isinstance(app, _AMSApp)
    app.fast_routes = FastRoutes(
        functools.partial(FastAPI.__call__, app), instance, _render_error, app.state.metrics
    )

    @app.exception_handler(AMSError)
    async def ams_error(_request: Request, exc: AMSError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        return _error_response(_from_http_exception(request, exc), headers)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client learns nothing of it.
        return _error_response(InternalError())

    throttle.install(app)  # 429 with Retry-After for throttled failed authentication

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "not JSON")
            location = first.get("loc") or ("body", 0)
            position = location[-1]
            return _error_response(
                BadInput(f"the request body is not valid JSON ({reason} at character {position}): fix it")
            )
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            {
                "error": "bad_input",
                "message": f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
            },
            status_code=422,
        )

    app.add_middleware(limits.RequestLimitsMiddleware)
    # Outermost: counts and times every answer, the limits' refusals included.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in (health.router, status.router, apikeys.router, audit.router, certificates.router):
        app.include_router(router)
    for router in (agent.router, devices.router):
        app.include_router(router)
    app.include_router(directories.router)
    app.include_router(backups.router)
    app.include_router(backup_targets.router)
    # The AWS Directory Service-compatible endpoint (issue 5): POST /aws/ds, and POST / by target.
    # It declares no FastAPI body limit: it reads at most 1 MiB itself and answers in AWS's shape.
    app.include_router(aws_ds.router)
    # The web console: GET / and its own paths (the AWS-compatible endpoint keeps POST /).
    from ams.web import install as install_console

    install_console(app)
    return app
