"""Home identity: which home wrote each backup; a schedule paused after a restore.

``instance.home_id`` names this home (a new one at ``ams init`` and at a restore into a new
home, kept by a restore over an existing instance). ``backups.home_id`` records the home
that wrote each archive: retention deletes only its own. ``backup_schedule.paused_reason``
holds why scheduled backups wait for the administrator (a restore brought another home's
destination). Rows that exist before this revision were written by this database's home,
as far as it knows: they get its new identity (see docs/formats.md).

Revision ID: 0007_home_identity
Revises: 0006_password_versions
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0007_home_identity"
down_revision = "0006_password_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("home_id", sa.String(32), nullable=True))
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("home_id", sa.String(32), nullable=True))
    with op.batch_alter_table("backup_schedule") as batch:
        batch.add_column(sa.Column("paused_reason", sa.Text, nullable=True))
    home_id = "hm_" + secrets.token_hex(8)
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE instance SET home_id = :h"), {"h": home_id})
    bind.execute(sa.text("UPDATE backups SET home_id = :h"), {"h": home_id})


def downgrade() -> None:
    with op.batch_alter_table("backup_schedule") as batch:
        batch.drop_column("paused_reason")
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("home_id")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("home_id")
