"""The SQLAlchemy models, one module per capability. Every change comes with a migration.

Import a capability's models from its own module (``ams.db.models.vault``); importing this
package registers every table on ``Base.metadata``, which Alembic compares against.
"""

from __future__ import annotations

from ams.db.models import backups, certificates, directory, vault  # noqa: F401 - registers tables
from ams.db.models.base import Base, Timestamp, UTCDateTime
from ams.db.models.foundation import ApiKey, AuditEvent, InstanceRow, KeyWrapping

__all__ = ["ApiKey", "AuditEvent", "Base", "InstanceRow", "KeyWrapping", "Timestamp", "UTCDateTime"]
