"""Certificates table: the password encryption certificates of every scope."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = ["CertificateRow"]

# Exactly one active certificate per scope: the service enforces it, and this partial
# unique index (SQLite and PostgreSQL both have them) makes a second one impossible.
_ACTIVE = text("state = 'active'")


class CertificateRow(Base):
    """One certificate; its private key sealed by the secret box (None once lost)."""

    __tablename__ = "certificates"
    __table_args__ = (
        Index(
            "uq_certificates_active_scope",
            "scope",
            unique=True,
            sqlite_where=_ACTIVE,
            postgresql_where=_ACTIVE,
        ),
    )

    thumbprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    not_before: Mapped[datetime] = mapped_column(Timestamp)
    not_after: Mapped[datetime] = mapped_column(Timestamp)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    # Sealed with purpose "certificate-private-key", context "certificate:<thumbprint>".
    private_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # active | standby | lost
    source: Mapped[str] = mapped_column(String(16))  # generated | imported
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    activated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    lost_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
