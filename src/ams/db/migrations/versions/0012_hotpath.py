"""The hot path's generation number: ``instance.generation``.

Every change of certificates (created, activated, lost, imported) or of a password policy
adds one to it, in the transaction of the change; each ``ams serve`` process keeps the
active certificates, their unsealed keys and the policies while the number stays the same
(ams.vault.hotcache).

Revision ID: 0012_hotpath
Revises: 0011_legacy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_hotpath"
down_revision = "0011_legacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("generation")
