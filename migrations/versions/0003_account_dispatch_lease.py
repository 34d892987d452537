"""One dispatch lease per account instead of one per event; due-event indexes partial everywhere

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:20:00

0.3.0's dispatcher leases an account, not each of its events: a batch is claimed by reading
it, and only its outcome is written to the events (see waconv.conversions.dispatcher). Events
a 0.2 dispatcher left ``sending`` are pending again (stop the dispatchers before upgrading; an
event whose request was in flight then goes again under the same event_id). The due-event
indexes hold only pending events, on SQLite too, so that marking a batch sent is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waconv.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")
OLD_DUE = sa.text("status IN ('pending', 'sending')")
INDEXES = {
    "ix_conversions_due": ["next_attempt_at"],
    "ix_conversions_account_due": ["waba_id", "next_attempt_at", "id"],
}
OLD_INDEXES = {
    "ix_conversions_due": ["status", "next_attempt_at"],
    "ix_conversions_account_due": ["waba_id", "status", "next_attempt_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatch_token", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("dispatch_leased_until", waconv.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE conversions SET status = 'pending' WHERE status = 'sending'")
    for name in INDEXES:
        op.drop_index(name, table_name="conversions")
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.drop_column("lease_token")
        batch_op.drop_column("leased_until")
    for name, columns in INDEXES.items():
        op.create_index(
            name, "conversions", columns, sqlite_where=PENDING, postgresql_where=PENDING
        )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in INDEXES:
        op.drop_index(name, table_name="conversions")
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("leased_until", waconv.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("lease_token", sa.String(length=64), nullable=True))
    for name, columns in OLD_INDEXES.items():
        if postgresql:
            op.create_index(name, "conversions", columns, postgresql_where=OLD_DUE)
        else:
            op.create_index(name, "conversions", columns)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("dispatch_leased_until")
        batch_op.drop_column("dispatch_token")
