"""LDAP access: each directory's admin password, as an Argon2id hash.

``directories.admin_password_hash`` is the PHC string of the password that a simple bind as
``Admin@DNSNAME`` (or the admin entry's DN) must give; NULL (every directory made before
this revision, or created without a password) means nobody can bind as its admin until
`ams directory admin-password D` sets one.

Revision ID: 0010_ldap
Revises: 0009_offsite
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_ldap"
down_revision = "0009_offsite"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("directories") as batch:
        batch.add_column(sa.Column("admin_password_hash", sa.Text, nullable=True))
    op.create_table(
        "directory_values",
        sa.Column("object_id", sa.Integer, nullable=False),
        sa.Column("attribute", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("directory_id", sa.String(12), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("object_id", "attribute", "value", name="pk_directory_values"),
    )
    op.create_index(
        "ix_directory_values_lookup", "directory_values", ["directory_id", "generation", "attribute", "value"]
    )
    from ams.directory import valueindex

    bind = op.get_bind()
    for directory_id, generation in bind.execute(
        sa.text("SELECT DISTINCT directory_id, generation FROM directory_objects")
    ).all():
        valueindex.index_generation(bind, directory_id, generation)


def downgrade() -> None:
    op.drop_index("ix_directory_values_lookup", table_name="directory_values")
    op.drop_table("directory_values")
    # Not a batch (which on SQLite copies the table and drops the old one, and the drop
    # would cascade to every entry): both engines drop a column in place.
    op.execute("ALTER TABLE directories DROP COLUMN admin_password_hash")
