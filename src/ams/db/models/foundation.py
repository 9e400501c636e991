"""Foundation tables: the instance, the master key wrappings, API keys, audit events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = ["ApiKey", "AuditEvent", "InstanceRow", "KeyWrapping"]


class InstanceRow(Base):
    """The one row that names this instance and its master key."""

    __tablename__ = "instance"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    created_by_version: Mapped[str] = mapped_column(String(32))
    master_key_fingerprint: Mapped[str] = mapped_column(String(16))
    # This home's identity ("hm_" + 16 hex): new at `ams init` and at a restore into a new
    # home, kept by a restore over an instance. The catalog records it per backup written.
    home_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Bumped by every change of certificates or password policies (ams.vault.hotcache): what
    # each server process compares to know its cached keys and policies are current.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class KeyWrapping(Base):
    """The master key, wrapped: kind ``service`` or ``recovery``, exactly one of each."""

    __tablename__ = "master_key_wrappings"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    wrapping: Mapped[str] = mapped_column(Text)
    # For the service wrapping: where its key lives (file, environment, credential), so an
    # unlock run without that key cannot silently move the instance to another one.
    key_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the secret, for bearer authentication without the master key ...
    secret_hash: Mapped[str] = mapped_column(String(64))
    # ... and the secret itself, sealed, because request signing (SigV4) needs it.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(String(256), nullable=True)
    details: Mapped[str] = mapped_column(Text, default="{}")
