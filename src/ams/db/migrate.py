"""Alembic, driven from code: no alembic.ini, the scripts ship inside the package.

Alembic is imported by the functions that migrate or read the scripts, not by this module:
it is imported from everywhere (the backup services, the CLI) and most commands only need
the revisions, which ``ams.db.revision`` answers without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ams.db.revision import HEAD_REVISION, current_revision

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Engine

__all__ = ["current_revision", "head_revision", "is_known", "script_head", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The revision this AMS needs (``HEAD_REVISION``; a test keeps it equal to :func:`script_head`)."""
    return HEAD_REVISION


def script_head() -> str:
    """The head of the migration scripts, as Alembic finds it by reading them all."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(engine), revision)


def known_revisions() -> set[str]:
    return {s.revision for s in _scripts().walk_revisions()}


def is_known(revision: str) -> bool:
    """Whether this AMS has ``revision`` (its own head needs no script read)."""
    return revision == HEAD_REVISION or revision in known_revisions()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    command.downgrade(_config(engine), revision)
