"""The database: SQLAlchemy models, engines for SQLite and PostgreSQL, Alembic migrations."""

from __future__ import annotations

from ams.db.engine import describe_url, make_engine
from ams.db.migrate import current_revision, head_revision, upgrade

__all__ = ["current_revision", "describe_url", "head_revision", "make_engine", "upgrade"]
