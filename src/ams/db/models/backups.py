"""Backups tables: the catalog of archives written, and the schedule with its last results."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = ["BackupRecord", "BackupSchedule"]


class BackupRecord(Base):
    """One backup attempt: a complete archive on disk, or a failure and its reason."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # manual | scheduled | pre-restore
    status: Mapped[str] = mapped_column(String(16), index=True)  # complete | failed
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    mk_fingerprint: Mapped[str] = mapped_column(String(16))
    schema_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recovery_password_set_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    verified_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The home that wrote the archive (instance.home_id); None: unknown. Retention deletes
    # only archives this home wrote.
    home_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class BackupSchedule(Base):
    """The one schedule row (id 1); absent means the defaults (daily 02:00 UTC, 14 days)."""

    __tablename__ = "backup_schedule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at_time: Mapped[str | None] = mapped_column(String(5), nullable=True)  # "HH:MM" UTC, or None
    every_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    destination: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: $AMS_HOME/backups
    retain_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_daily: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_weekly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_monthly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Set by a restore that brought another home's schedule: scheduled runs wait until the
    # administrator confirms or changes the destination (`ams backup schedule set --dest`).
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Results of the scheduled runs.
    last_run_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_result: Mapped[str | None] = mapped_column(String(16), nullable=True)  # success | failure
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failures_total: Mapped[int] = mapped_column(Integer, default=0)
