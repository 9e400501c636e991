"""Directories, objects, snapshots.

Revision ID: 0004_directories
Revises: 0003_vault
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_directories"
down_revision = "0003_vault"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "directories",
        sa.Column("id", sa.String(12), nullable=False),
        sa.Column("dns_name", sa.String(255), nullable=False),
        sa.Column("short_name", sa.String(64), nullable=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("edition", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("stage_reason", sa.Text, nullable=True),
        sa.Column("stage_changed_at", TS, nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("description", sa.String(128), nullable=True),
        sa.Column("size", sa.String(16), nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("last_generation", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("launched_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_directories"),
        sa.UniqueConstraint("dns_name", name="uq_directories_dns_name"),
    )
    op.create_table(
        "directory_regions",
        sa.Column("directory_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data_generation", sa.Integer, nullable=False),
        sa.Column("launched_at", TS, nullable=False),
        sa.Column("last_updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("directory_id", "region", name="pk_directory_regions"),
        sa.ForeignKeyConstraint(
            ["directory_id"],
            ["directories.id"],
            name="fk_directory_regions_directory_id_directories",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "directory_objects",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("directory_id", sa.String(12), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("dn", sa.Text, nullable=False),
        sa.Column("dn_norm", sa.Text, nullable=False),
        sa.Column("object_classes", sa.Text, nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_directory_objects"),
        sa.ForeignKeyConstraint(
            ["directory_id"],
            ["directories.id"],
            name="fk_directory_objects_directory_id_directories",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("directory_id", "generation", "dn_norm", name="uq_directory_objects_dn"),
    )
    op.create_index(
        "ix_directory_objects_generation", "directory_objects", ["directory_id", "generation", "id"]
    )
    op.create_table(
        "directory_snapshots",
        sa.Column("id", sa.String(12), nullable=False),
        sa.Column("directory_id", sa.String(12), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("start_time", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("file", sa.String(255), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("entries", sa.Integer, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_directory_snapshots"),
        sa.ForeignKeyConstraint(
            ["directory_id"],
            ["directories.id"],
            name="fk_directory_snapshots_directory_id_directories",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_directory_snapshots_start_time", "directory_snapshots", ["start_time"])
    op.create_table(
        "directory_restores",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("directory_id", sa.String(12), nullable=False),
        sa.Column("snapshot_id", sa.String(12), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous_generation", sa.Integer, nullable=False),
        sa.Column("target_generation", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_directory_restores"),
        sa.ForeignKeyConstraint(
            ["directory_id"],
            ["directories.id"],
            name="fk_directory_restores_directory_id_directories",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_directory_restores_directory_id", "directory_restores", ["directory_id"])
    op.create_index("ix_directory_restores_state", "directory_restores", ["state"])


def downgrade() -> None:
    op.drop_index("ix_directory_restores_state", table_name="directory_restores")
    op.drop_index("ix_directory_restores_directory_id", table_name="directory_restores")
    op.drop_table("directory_restores")
    op.drop_index("ix_directory_snapshots_start_time", table_name="directory_snapshots")
    op.drop_table("directory_snapshots")
    op.drop_index("ix_directory_objects_generation", table_name="directory_objects")
    op.drop_table("directory_objects")
    op.drop_table("directory_regions")
    op.drop_table("directories")
