"""LDAP access: each directory's admin password, as an Argon2id hash.

``directories.admin_password_hash`` is the PHC string of the password that a simple bind as
``Admin@DNSNAME`` (or the admin entry's DN) must give; NULL (every directory made before
this revision, or created without a password) means nobody can bind as its admin until
`ams directory admin-password D` sets one.

Revision ID: 0009_ldap
Revises: 0008_console
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_ldap"
down_revision = "0008_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("directories") as batch:
        batch.add_column(sa.Column("admin_password_hash", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("directories") as batch:
        batch.drop_column("admin_password_hash")
