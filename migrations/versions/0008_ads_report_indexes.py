"""Indexes for the ads report: clicks by date, conversions by click id

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-06 23:00:00

The report (GET /admin/reports/ads, the console's ads page) selects the clicks of a date range
and joins the conversions credited to them through ``ctwa_clid``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_clicks_clicked_at", "clicks", ["clicked_at"])
    op.create_index("ix_conversions_ctwa_clid", "conversions", ["ctwa_clid"])


def downgrade() -> None:
    op.drop_index("ix_conversions_ctwa_clid", table_name="conversions")
    op.drop_index("ix_clicks_clicked_at", table_name="clicks")
