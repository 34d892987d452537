"""Users whose ids change: earlier ids, parent_user_id, group and business-sent messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 23:00:00

0.4 follows a user across ``wa_id`` and business-scoped ``user_id`` changes (issue #14):
``user_aliases`` links each earlier id to the current one, conversations keep the
``parent_user_id``, and messages say where they come from (``origin``: a group, the business,
a marketing-message link click; none for a user's one-to-one message) with the ``group_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waconv.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_aliases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("waba_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("previous", sa.String(length=160), nullable=False),
        sa.Column("current", sa.String(length=160), nullable=False),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", waconv.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_user_aliases_delivery_id_webhook_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_aliases")),
        sa.UniqueConstraint("previous", "waba_id", name=op.f("uq_user_aliases_previous_waba_id")),
    )
    op.create_index("ix_user_aliases_current", "user_aliases", ["current"], unique=False)
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_user_id", sa.String(length=160), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("group_id", sa.String(length=160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("group_id")
        batch_op.drop_column("origin")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("parent_user_id")
    op.drop_index("ix_user_aliases_current", table_name="user_aliases")
    op.drop_table("user_aliases")
