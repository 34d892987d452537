"""Pending events are indexed once, by account

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 07:00:00

``ix_conversions_due`` (next_attempt_at of pending events) served the 0.2 dispatcher, which
claimed across accounts. Since 0003 every query on pending events names an account or reads
them all (the claim, the accounts with due events, the expiry sweep, ``dispatch --once``'s
summary, the metrics), and ``ix_conversions_account_due`` serves each. Marking a batch of
1,000 sent took every row out of both: on SQLite 3.1-3.3 ms per batch without this one,
3.6-3.8 with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.drop_index("ix_conversions_due", table_name="conversions")


def downgrade() -> None:
    op.create_index(
        "ix_conversions_due",
        "conversions",
        ["next_attempt_at"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
