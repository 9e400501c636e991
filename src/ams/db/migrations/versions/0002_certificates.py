"""Password encryption certificates.

Revision ID: 0002_certificates
Revises: 0001_foundation
"""

from __future__ import annotations

revision = "0002_certificates"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with the capability that owns this revision


def downgrade() -> None:
    pass
