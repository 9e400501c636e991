"""Backups tables: the catalog of archives written, and the schedule with its last results."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = ["BackupRecord", "BackupSchedule", "OffsiteCopy", "OffsiteTarget"]


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


class OffsiteTarget(Base):
    """An S3-compatible bucket (and prefix) every verified backup is also copied to."""

    __tablename__ = "offsite_targets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(63))
    prefix: Mapped[str] = mapped_column(Text, default="")  # "" or ending in "/"
    endpoint_url: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: AWS itself
    region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lock_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lock_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)  # governance | compliance
    keep_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Given credentials: the key id in clear (an identifier), the secret sealed by the secret
    # box (purpose "offsite", context "offsite:NAME"). Both None: the standard AWS chain.
    access_key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The scheduler's restore drill from this target: every N days (None: none), and its last result.
    drill_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_drill_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_drill_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_drill_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class OffsiteCopy(Base):
    """One backup on one target: copied (and checked), or failed with its reason."""

    __tablename__ = "offsite_copies"

    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    backup_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # copied | failed | pruned (by its retention)
    key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    lock_until: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime] = mapped_column(Timestamp)
    copied_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
