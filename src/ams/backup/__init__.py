"""Backups of the whole instance: the ``.amsbak`` archive, create, verify, restore, schedule.

DESIGN.md section 8 is the contract; docs/formats.md describes the archive byte by byte.
"""

from __future__ import annotations

from ams.backup.catalog import BackupEntry, list_backups
from ams.backup.create import BackupResult, create_backup
from ams.backup.journal import resume as resume_interrupted_restore
from ams.backup.restore import RestoreResult, restore_backup
from ams.backup.schedule import (
    ScheduleSettings,
    get_settings,
    prune,
    run_due,
    run_scheduled,
    schedule_status,
    set_settings,
)
from ams.backup.verify import verify_backup

__all__ = [
    "BackupEntry",
    "BackupResult",
    "RestoreResult",
    "ScheduleSettings",
    "create_backup",
    "get_settings",
    "list_backups",
    "prune",
    "restore_backup",
    "resume_interrupted_restore",
    "run_due",
    "run_scheduled",
    "schedule_status",
    "set_settings",
    "verify_backup",
]
