"""Devices, registration keys, passwords.

Revision ID: 0003_vault
Revises: 0002_certificates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_vault"
down_revision = "0002_certificates"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registration_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("activation_limit", sa.Integer, nullable=True),
        sa.Column("used_count", sa.Integer, nullable=False),
        sa.Column("approval_required", sa.Boolean, nullable=False),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registration_keys"),
        sa.UniqueConstraint("name", name="uq_registration_keys_name"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("registration_key_id", sa.String(32), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("current_version", sa.Integer, nullable=True),
        sa.Column("force_rotation", sa.Boolean, nullable=False),
        sa.Column("forced_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.ForeignKeyConstraint(
            ["registration_key_id"],
            ["registration_keys.id"],
            name="fk_devices_registration_key_id_registration_keys",
        ),
    )
    op.create_index("ix_devices_name", "devices", ["name"])
    op.create_table(
        "device_passwords",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("certificate_thumbprint", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("effective_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False),
        sa.Column("superseded_at", TS, nullable=True),
        sa.Column("replaces_id", sa.Integer, nullable=True),
        sa.Column("answered_force", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_passwords"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_device_passwords_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("request_id", name="uq_device_passwords_request_id"),
        sa.UniqueConstraint("device_id", "version", name="uq_device_passwords_device_version"),
    )
    op.create_index("ix_device_passwords_device_current", "device_passwords", ["device_id", "is_current"])
    op.create_index(
        "ix_device_passwords_certificate_thumbprint", "device_passwords", ["certificate_thumbprint"]
    )
    op.create_table(
        "password_policies",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("max_age_days", sa.Integer, nullable=False),
        sa.Column("history_keep_count", sa.Integer, nullable=False),
        sa.Column("history_keep_days", sa.Integer, nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_password_policies"),
    )


def downgrade() -> None:
    op.drop_table("password_policies")
    op.drop_index("ix_device_passwords_certificate_thumbprint", table_name="device_passwords")
    op.drop_index("ix_device_passwords_device_current", table_name="device_passwords")
    op.drop_table("device_passwords")
    op.drop_index("ix_devices_name", table_name="devices")
    op.drop_table("devices")
    op.drop_table("registration_keys")
