"""Engines: the embedded SQLite database (WAL) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

from ams.db.sqlite import apply_pragmas

__all__ = ["describe_url", "engine_name", "make_engine", "sqlite_url"]


def sqlite_url(path: Path, *, create: bool) -> str:
    # mode=rw refuses to create a missing file: opening an instance must never leave an
    # empty database behind where the real one was lost.
    mode = "rwc" if create else "rw"
    return f"sqlite:///file:{path}?mode={mode}&uri=true"


def _normalise(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = _normalise(url)
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda dbapi_conn, _record: apply_pragmas(dbapi_conn))
    return engine


def engine_name(engine: Engine) -> str:
    return "sqlite" if engine.dialect.name == "sqlite" else "postgresql"


def describe_url(url: str) -> str:
    """The URL with any password masked, for output and logs."""
    return make_url(url).render_as_string(hide_password=True)
