"""Backup catalog and schedule.

Revision ID: 0005_backups
Revises: 0004_directories
"""

from __future__ import annotations

revision = "0005_backups"
down_revision = "0004_directories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with the capability that owns this revision


def downgrade() -> None:
    pass
