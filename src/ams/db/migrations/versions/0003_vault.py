"""Devices, registration keys, passwords.

Revision ID: 0003_vault
Revises: 0002_certificates
"""

from __future__ import annotations

revision = "0003_vault"
down_revision = "0002_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with the capability that owns this revision


def downgrade() -> None:
    pass
