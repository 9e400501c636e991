"""The SQLAlchemy models, one module per capability. Every change comes with a migration.

Import a capability's models from its own module (``ams.db.models.vault``). This package
holds the foundation tables every command uses and loads the other capabilities only when
``Base`` is taken from it: ``from ams.db.models import Base`` (Alembic's env.py, the test
that compares the models with the migrations) gets a metadata that names every table, while
opening an instance does not build the mappers of tables it never reads (nor load the
PostgreSQL dialect that the certificates' partial index names).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ams.db.models.base import Timestamp, UTCDateTime
from ams.db.models.foundation import ApiKey, AuditEvent, InstanceRow, KeyWrapping

if TYPE_CHECKING:
    from ams.db.models.base import Base

__all__ = ["ApiKey", "AuditEvent", "Base", "InstanceRow", "KeyWrapping", "Timestamp", "UTCDateTime"]

# Every capability with tables beyond the foundation. A new models module goes here.
_CAPABILITIES = ("certificates", "vault", "directory", "backups", "console")


def __getattr__(name: str) -> object:
    if name != "Base":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for capability in _CAPABILITIES:
        importlib.import_module(f"{__name__}.{capability}")
    from ams.db.models.base import Base

    globals()["Base"] = Base
    return Base
