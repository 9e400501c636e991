"""Backup catalog and schedule.

Revision ID: 0005_backups
Revises: 0004_directories
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_backups"
down_revision = "0004_directories"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.Column("mk_fingerprint", sa.String(16), nullable=False),
        sa.Column("schema_revision", sa.String(64), nullable=True),
        sa.Column("recovery_password_set_at", TS, nullable=True),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("verified_ok", sa.Boolean, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backups"),
    )
    op.create_index("ix_backups_status", "backups", ["status"])
    op.create_index("ix_backups_created_at", "backups", ["created_at"])
    op.create_table(
        "backup_schedule",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("at_time", sa.String(5), nullable=True),
        sa.Column("every_seconds", sa.Integer, nullable=True),
        sa.Column("destination", sa.Text, nullable=True),
        sa.Column("retain_days", sa.Integer, nullable=True),
        sa.Column("keep_last", sa.Integer, nullable=True),
        sa.Column("keep_daily", sa.Integer, nullable=True),
        sa.Column("keep_weekly", sa.Integer, nullable=True),
        sa.Column("keep_monthly", sa.Integer, nullable=True),
        sa.Column("updated_at", TS, nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_result", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("failures_total", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_backup_schedule"),
    )


def downgrade() -> None:
    op.drop_table("backup_schedule")
    op.drop_index("ix_backups_created_at", table_name="backups")
    op.drop_index("ix_backups_status", table_name="backups")
    op.drop_table("backups")
