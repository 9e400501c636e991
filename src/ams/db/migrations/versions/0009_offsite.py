"""Offsite targets (S3-compatible object storage) and the copies made to them.

Revision ID: 0009_offsite
Revises: 0008_console
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_offsite"
down_revision = "0008_console"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "offsite_targets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(63), nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("endpoint_url", sa.Text, nullable=True),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("lock_days", sa.Integer, nullable=True),
        sa.Column("lock_mode", sa.String(16), nullable=True),
        sa.Column("keep_days", sa.Integer, nullable=True),
        sa.Column("keep_last", sa.Integer, nullable=True),
        sa.Column("access_key_id", sa.String(128), nullable=True),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=True),
        sa.Column("drill_days", sa.Integer, nullable=True),
        sa.Column("last_drill_at", TS, nullable=True),
        sa.Column("last_drill_ok", sa.Boolean, nullable=True),
        sa.Column("last_drill_error", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_offsite_targets"),
    )
    op.create_table(
        "offsite_copies",
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("backup_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("version_id", sa.Text, nullable=True),
        sa.Column("lock_until", TS, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_attempt_at", TS, nullable=False),
        sa.Column("copied_at", TS, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("target", "backup_id", name="pk_offsite_copies"),
    )
    op.create_index("ix_offsite_copies_state", "offsite_copies", ["state"])


def downgrade() -> None:
    op.drop_index("ix_offsite_copies_state", table_name="offsite_copies")
    op.drop_table("offsite_copies")
    op.drop_table("offsite_targets")
