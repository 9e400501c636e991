"""Backups of the whole instance: the ``.amsbak`` archive, create, verify, restore, schedule.

docs/operations.md says what each command does; docs/formats.md describes the archive
byte by byte.
The names below load their module on first use, so a command that only creates a backup
does not import restore, verify and the schedule as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ams.backup.catalog import BackupEntry, list_backups
    from ams.backup.create import BackupResult, create_backup, create_backup_at
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

_WHERE = {
    "BackupEntry": ("catalog", "BackupEntry"),
    "list_backups": ("catalog", "list_backups"),
    "BackupResult": ("create", "BackupResult"),
    "create_backup": ("create", "create_backup"),
    "create_backup_at": ("create", "create_backup_at"),
    "resume_interrupted_restore": ("journal", "resume"),
    "RestoreResult": ("restore", "RestoreResult"),
    "restore_backup": ("restore", "restore_backup"),
    "ScheduleSettings": ("schedule", "ScheduleSettings"),
    "get_settings": ("schedule", "get_settings"),
    "prune": ("schedule", "prune"),
    "run_due": ("schedule", "run_due"),
    "run_scheduled": ("schedule", "run_scheduled"),
    "schedule_status": ("schedule", "schedule_status"),
    "set_settings": ("schedule", "set_settings"),
    "verify_backup": ("verify", "verify_backup"),
}

__all__ = [
    "BackupEntry",
    "BackupResult",
    "RestoreResult",
    "ScheduleSettings",
    "create_backup",
    "create_backup_at",
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


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'ams.backup' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"ams.backup.{module}"), attribute)
    globals()[name] = value
    return value
