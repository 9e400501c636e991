"""The FastAPI application of ``ams serve``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ams import __version__
from ams.api import aws_ds, throttle
from ams.api.metrics import Metrics
from ams.api.routes import agent, apikeys, audit, backups, certificates, devices, directories, health, status
from ams.errors import AMSError, AuthenticationRequired, MasterKeyLocked
from ams.instance import Instance

__all__ = ["create_app"]


def _error_response(exc: AMSError) -> JSONResponse:
    headers = {}
    if isinstance(exc, AuthenticationRequired):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, MasterKeyLocked):
        headers["Retry-After"] = "60"
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Background jobs that run while the app serves, stopped when it stops.

    Directories (issue 5): the restore worker and the daily automatic snapshots, one thread
    (ams.directory.background.DirectoryJobs); tests drive its ``tick()`` instead.
    """
    from ams.directory.background import DirectoryJobs

    directory_jobs = DirectoryJobs(app.state.instance)
    app.state.directory_jobs = directory_jobs
    directory_jobs.start()
    # Backups (issue 4): the scheduled backup thread (ams.backup.scheduler.BackupScheduler).
    from ams.backup.scheduler import BackupScheduler

    backup_scheduler = BackupScheduler(app.state.instance)
    app.state.backup_scheduler = backup_scheduler
    backup_scheduler.start()
    # Issue 18: audit retention and the failed-authentication summaries (ams.audit_retention).
    from ams.audit_retention import AuditJobs

    audit_jobs = app.state.audit_jobs = AuditJobs(app.state.instance)
    audit_jobs.start()
    try:
        yield
    finally:
        await asyncio.to_thread(audit_jobs.stop)
        await asyncio.to_thread(backup_scheduler.stop)
        await asyncio.to_thread(directory_jobs.stop)


def create_app(instance: Instance) -> FastAPI:
    app = FastAPI(
        title="AMS",
        version=__version__,
        description="Access Manager Service: device administrator passwords, directories, recovery.",
        # FastAPI's interactive docs pull their scripts from a CDN; AMS serves no third-party
        # assets, so only the OpenAPI document itself is published.
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.instance = instance
    app.state.metrics = Metrics(instance)

    @app.exception_handler(AMSError)
    async def ams_error(_request: Request, exc: AMSError) -> JSONResponse:
        return _error_response(exc)

    throttle.install(app)  # 429 with Retry-After for throttled failed authentication

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            {
                "error": "bad_input",
                "message": f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
            },
            status_code=422,
        )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", "unmatched")
        app.state.metrics.requests.labels(label, str(response.status_code)).inc()
        app.state.metrics.latency.labels(label).observe(time.perf_counter() - started)
        return response

    for router in (health.router, status.router, apikeys.router, audit.router, certificates.router):
        app.include_router(router)
    for router in (agent.router, devices.router):
        app.include_router(router)
    app.include_router(directories.router)
    app.include_router(backups.router)
    # The AWS Directory Service-compatible endpoint (issue 5): POST /aws/ds, and POST / by target.
    app.include_router(aws_ds.router)
    return app
