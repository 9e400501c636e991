"""Password encryption certificates.

Revision ID: 0002_certificates
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_certificates"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ACTIVE = sa.text("state = 'active'")


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("thumbprint", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("not_before", TS, nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("certificate_der", sa.LargeBinary, nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("lost_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("thumbprint", name="pk_certificates"),
    )
    op.create_index("ix_certificates_scope", "certificates", ["scope"])
    op.create_index(
        "uq_certificates_active_scope",
        "certificates",
        ["scope"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_certificates_active_scope", table_name="certificates")
    op.drop_index("ix_certificates_scope", table_name="certificates")
    op.drop_table("certificates")
