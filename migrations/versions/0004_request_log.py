"""The request log: every request the dispatcher sends, and the conversions it carried

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 22:50:00

New tables only (``canceled``, the new conversion status, needs no schema change): upgrading
is safe with dispatchers running; a request sent before the upgrade is simply not in the log.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waconv.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("waba_id", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=16), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("events_received", sa.Integer(), nullable=True),
        sa.Column("fbtrace_id", sa.String(length=128), nullable=True),
        sa.Column(
            "messages",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_subcode", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_requests")),
    )
    with op.batch_alter_table("dispatch_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dispatch_requests_at"), ["at"], unique=False)

    op.create_table(
        "dispatch_request_conversions",
        sa.Column(
            "request_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "conversion_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "request_id", "conversion_id", name=op.f("pk_dispatch_request_conversions")
        ),
    )
    with op.batch_alter_table("dispatch_request_conversions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispatch_request_conversions_conversion_id"),
            ["conversion_id"],
            unique=False,
        )


def downgrade() -> None:
    # A canceled conversion has no meaning to earlier versions: it stays unsent as failed.
    op.execute(
        "UPDATE conversions SET status = 'failed', last_error = 'canceled by an operator'"
        " WHERE status = 'canceled'"
    )
    with op.batch_alter_table("dispatch_request_conversions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispatch_request_conversions_conversion_id"))
    op.drop_table("dispatch_request_conversions")
    with op.batch_alter_table("dispatch_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispatch_requests_at"))
    op.drop_table("dispatch_requests")
