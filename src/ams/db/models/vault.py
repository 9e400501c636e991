"""Vault tables: registration keys, devices, their passwords (ciphertext) and the policy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = [
    "ACTIVE",
    "DISABLED",
    "PENDING",
    "Device",
    "DevicePassword",
    "PasswordPolicyRow",
    "RegistrationKey",
]

# Password versions: 64-bit (BIGINT on PostgreSQL; SQLite's INTEGER is 64-bit already).
Version = BigInteger().with_variant(Integer(), "sqlite")


class RegistrationKey(Base):
    """A key agents present once, to register a device."""

    __tablename__ = "registration_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    # None: unlimited. Otherwise the number of registrations the key allows in all.
    activation_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    approval_required: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


_BOUND = text("directory_dn_norm IS NOT NULL AND status != 'disabled'")


# A device's status (ams.vault.devices).
PENDING, ACTIVE, DISABLED = "pending", "active", "disabled"


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # One device (not disabled) per directory entry (migration 0011_legacy).
        Index(
            "ux_devices_directory_dn",
            "scope",
            "directory_dn_norm",
            unique=True,
            sqlite_where=_BOUND,
            postgresql_where=_BOUND,
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    scope: Mapped[str] = mapped_column(String(64), default="agent")
    registration_key_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("registration_keys.id"), nullable=True
    )
    token_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | active | disabled
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    approved_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # The version of the current password as this database knows it (None: no password yet).
    current_version: Mapped[int | None] = mapped_column(Version, nullable=True)
    # `ams device expire`: rotate at the next check-in with reason "forced".
    force_rotation: Mapped[bool] = mapped_column(Boolean, default=False)
    forced_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # A device of a directory scope may be bound to its computer object there (ams.vault.legacy):
    # its password blob is then stored on that entry too, and it may bind over LDAP as it.
    directory_dn: Mapped[str | None] = mapped_column(Text, nullable=True)
    directory_dn_norm: Mapped[str | None] = mapped_column(Text, nullable=True)


class DevicePassword(Base):
    """One password of one device, as the ciphertext blob the agent made (never decrypted at rest)."""

    __tablename__ = "device_passwords"
    __table_args__ = (
        UniqueConstraint("device_id", "version", name="uq_device_passwords_device_version"),
        Index("ix_device_passwords_device_current", "device_id", "is_current"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(32), ForeignKey("devices.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Version)
    account: Mapped[str] = mapped_column(String(64))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_thumbprint: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str] = mapped_column(String(40), unique=True)
    effective_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    superseded_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # The password this one replaced, so an undo (DELETE in the rollback window) restores it.
    replaces_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # True when this password answered a forced rotation; an undo puts the request back.
    answered_force: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class PasswordPolicyRow(Base):
    """The password policy of a scope; the row with scope ``default`` applies to the others."""

    __tablename__ = "password_policies"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    length: Mapped[int] = mapped_column(Integer)
    max_age_days: Mapped[int] = mapped_column(Integer)
    history_keep_count: Mapped[int] = mapped_column(Integer)
    history_keep_days: Mapped[int] = mapped_column(Integer)
    account: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
