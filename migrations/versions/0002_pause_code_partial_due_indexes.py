"""accounts.pause_code; due-event indexes partial on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 00:16:00

Databases created by 0.1.0 get what 0.2.0 expects: the Meta code behind an account's pause
in a column of its own, and, on PostgreSQL, due-event indexes that hold only events still to
send (marking a batch sent then writes nothing into them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = sa.text("status IN ('pending', 'sending')")
INDEXES = {
    "ix_conversions_due": ["status", "next_attempt_at"],
    "ix_conversions_account_due": ["waba_id", "status", "next_attempt_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pause_code", sa.String(length=32), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for name, columns in INDEXES.items():
            op.drop_index(name, table_name="conversions")
            op.create_index(name, "conversions", columns, postgresql_where=DUE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, columns in INDEXES.items():
            op.drop_index(name, table_name="conversions")
            op.create_index(name, "conversions", columns)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("pause_code")
