"""Accounts throttled by Meta's rate limits: until when, and why

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 00:00:00

A rate limit backs off the account as a whole (or every account, for the app's limits), not
event by event: the dispatcher skips an account until ``throttled_until``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waconv.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("throttled_until", waconv.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("throttle_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("throttle_reason")
        batch_op.drop_column("throttled_until")
