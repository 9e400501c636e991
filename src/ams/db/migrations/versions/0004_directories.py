"""Directories, objects, snapshots.

Revision ID: 0004_directories
Revises: 0003_vault
"""

from __future__ import annotations

revision = "0004_directories"
down_revision = "0003_vault"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with the capability that owns this revision


def downgrade() -> None:
    pass
