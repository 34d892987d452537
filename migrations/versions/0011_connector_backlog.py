"""Shopify deliveries applied in the background: the encrypted body while one waits

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 04:00:00

A Shopify order webhook that arrives while its process is applying another is stored
(``outcome = 'received'``) and answered at once; the background processor applies it. Until
then the receipt keeps the verified body, encrypted, and Shopify's send time; both are dropped
once it is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waconv.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("connector_receipts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body", sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column("triggered_at", waconv.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("connector_receipts", schema=None) as batch_op:
        batch_op.drop_column("triggered_at")
        batch_op.drop_column("body")
