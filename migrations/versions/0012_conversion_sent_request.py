"""The request that delivered a conversion, on the conversion

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 07:00:00

A request Meta accepted is linked to its events by the UPDATE that marks them sent
(``conversions.sent_request_id``; on PostgreSQL in the same statement as the request's own
row), instead of by 1,000 rows of ``dispatch_request_conversions`` written in a transaction of
their own, on the sender's path (bench/PROFILE.md, "Dispatch"). Refused and failed requests keep
their link rows. No foreign key and no index: the id is only read from its conversion, and a
pruned request leaves it pointing at nothing, as its link rows would have gone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Not in batch mode: on SQLite that would copy the table and drop the ads report's triggers.
    op.add_column("conversions", sa.Column("sent_request_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("conversions", "sent_request_id")  # SQLite 3.35+ drops a column in place
