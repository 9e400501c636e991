"""Devices bound to a directory's computer object (the legacy agents' directory-stored passwords).

A device whose scope is a directory id may be bound to one entry of that directory: its
``directory_dn`` (as given) and ``directory_dn_norm`` (ams.directory.dn.normalise). One
device that is not disabled per entry: a partial unique index on (scope, directory_dn_norm).

Revision ID: 0011_legacy
Revises: 0010_ldap
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_legacy"
down_revision = "0010_ldap"
branch_labels = None
depends_on = None

_WHERE = sa.text("directory_dn_norm IS NOT NULL AND status != 'disabled'")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("directory_dn", sa.Text, nullable=True))
        batch.add_column(sa.Column("directory_dn_norm", sa.Text, nullable=True))
    op.create_index(
        "ux_devices_directory_dn",
        "devices",
        ["scope", "directory_dn_norm"],
        unique=True,
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ux_devices_directory_dn", table_name="devices")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("directory_dn_norm")
        batch.drop_column("directory_dn")
