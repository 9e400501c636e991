"""Password versions are 64-bit: the agent protocol's versions never outgrow the columns.

On PostgreSQL ``INTEGER`` stops at 2**31 - 1; a device whose versions reached it could not
store the next one. The columns become ``BIGINT``. SQLite's ``INTEGER`` already holds 64
bits, so nothing changes there (the models say so with a SQLite variant).

Revision ID: 0006_password_versions
Revises: 0005_backups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_password_versions"
down_revision = "0005_backups"
branch_labels = None
depends_on = None

_COLUMNS = (("devices", "current_version", True), ("device_passwords", "version", False))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column, nullable in _COLUMNS:
        op.alter_column(
            table, column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=nullable
        )


def downgrade() -> None:
    # Refused by PostgreSQL ("integer out of range") while a version above 2**31 - 1 is stored.
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column, nullable in _COLUMNS:
        op.alter_column(
            table, column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=nullable
        )
