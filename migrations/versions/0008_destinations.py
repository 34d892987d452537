"""Destinations: per-account destination and Gateway settings, per-destination delivery state

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 23:00:00

An account sends to the Graph API, to a Conversions API Gateway, or to both. Its Gateway key
is stored encrypted like its token. A conversion of an account that sends to more than Graph
has one ``conversion_deliveries`` row per destination, so each destination gets it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waconv.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("destination", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("gateway_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("gateway_key_encrypted", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("gateway_events", sa.Text(), nullable=True))
    op.create_table(
        "conversion_deliveries",
        sa.Column(
            "conversion_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("destination", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", waconv.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversion_id"],
            ["conversions.id"],
            name=op.f("fk_conversion_deliveries_conversion_id_conversions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "conversion_id", "destination", name=op.f("pk_conversion_deliveries")
        ),
    )


def downgrade() -> None:
    op.drop_table("conversion_deliveries")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("gateway_events")
        batch_op.drop_column("gateway_key_encrypted")
        batch_op.drop_column("gateway_url")
        batch_op.drop_column("destination")
