"""Conversions that close outside the chat: connector receipts and hashed customer information

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 22:42:24

Two new tables, nothing else changes. ``connector_receipts``: one row per signed connector
delivery (a Shopify order webhook), unique on its webhook id, saying what became of it, never
its body. ``customer_identifiers``: customer information a connector named for a
conversation, only as SHA-256 (what user_data carries, and how an order is matched by email).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waconv.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customer_identifiers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("value_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_customer_identifiers_conversation_id_conversations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_identifiers")),
        sa.UniqueConstraint(
            "conversation_id",
            "field",
            "value_sha256",
            name=op.f("uq_customer_identifiers_conversation_id_field_value_sha256"),
        ),
    )
    with op.batch_alter_table("customer_identifiers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_customer_identifiers_lookup", ["field", "value_sha256"], unique=False
        )

    op.create_table(
        "connector_receipts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("connector", sa.String(length=16), nullable=False),
        sa.Column("webhook_id", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.String(length=255), nullable=True),
        sa.Column("event_name", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("matched_by", sa.String(length=16), nullable=True),
        sa.Column(
            "conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "conversion_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "identifiers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("received_at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_connector_receipts_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["conversion_id"],
            ["conversions.id"],
            name=op.f("fk_connector_receipts_conversion_id_conversions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connector_receipts")),
        sa.UniqueConstraint(
            "connector", "webhook_id", name=op.f("uq_connector_receipts_connector_webhook_id")
        ),
    )
    with op.batch_alter_table("connector_receipts", schema=None) as batch_op:
        batch_op.create_index("ix_connector_receipts_outcome_id", ["outcome", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_connector_receipts_received_at"), ["received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("connector_receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connector_receipts_received_at"))
        batch_op.drop_index("ix_connector_receipts_outcome_id")

    op.drop_table("connector_receipts")
    with op.batch_alter_table("customer_identifiers", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_identifiers_lookup")

    op.drop_table("customer_identifiers")
