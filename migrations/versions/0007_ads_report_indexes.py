"""The ads report's rollup of conversions per ad and click day, kept by triggers; clicks by date

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 23:00:00

The report (GET /admin/reports/ads, the console's ads page) counts the conversions credited to
the clicks of a date range. Joining a million conversions to their clicks at every request is
too slow, so ``ad_conversion_stats`` keeps the counts per account, ad, click day (UTC), event,
outcome (credited: pending or sent; not_sent: failed or expired) and Purchase currency, with
the revenue in millionths (exact on both databases). Triggers on ``conversions`` keep it,
whichever code writes the row: the dispatcher's pending -> sent costs only the trigger's WHEN
test. A conversion is credited to the first click (by time) of its ``ctwa_clid``.

On SQLite, a later migration that recreates ``conversions`` (batch mode for a column drop or
type change) drops these triggers: it must create them again (``create_triggers``).
"""

# ruff: noqa: S608  (SQL built from this file's own constants: no outside input reaches it)
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "waba_id, source_id, day, event_name, outcome, currency"
COUNTED = "('pending', 'sent', 'failed', 'expired')"
CREDITED = "('pending', 'sent')"

# --- SQLite: one trigger per operation, the key computed inline for NEW or OLD --------------


def _sqlite_key(row: str) -> list[str]:
    """The rollup key and revenue of conversion ``row`` (NEW, OLD, or a table alias)."""
    value = f"json_extract({row}.custom_data, '$.value')"
    first_click = (
        "(SELECT {col} FROM clicks WHERE ctwa_clid = " + row + ".ctwa_clid "
        "ORDER BY clicked_at, id LIMIT 1)"
    )
    return [
        f"{row}.waba_id",
        f"coalesce({first_click.format(col='source_id')}, '')",
        first_click.format(col="substr(clicked_at, 1, 10)"),
        f"{row}.event_name",
        f"CASE WHEN {row}.status IN {CREDITED} THEN 'credited' ELSE 'not_sent' END",
        f"CASE WHEN {row}.event_name = 'Purchase' THEN "
        f"coalesce(upper(substr(json_extract({row}.custom_data, '$.currency'), 1, 8)), '') "
        "ELSE '' END",
        f"CASE WHEN {row}.event_name = 'Purchase' "
        f"AND json_type({row}.custom_data, '$.value') IN ('integer', 'real') "
        f"AND abs({value}) < 1e12 THEN CAST(round({value} * 1000000) AS INTEGER) ELSE 0 END",
    ]


def _sqlite_counted(row: str) -> str:
    return (
        f"{row}.status IN {COUNTED} AND EXISTS "
        f"(SELECT 1 FROM clicks WHERE ctwa_clid = {row}.ctwa_clid)"
    )


def _sqlite_add() -> str:
    return f"""
        INSERT INTO ad_conversion_stats ({KEY}, revenue_micros, events)
        SELECT {", ".join(_sqlite_key("NEW"))}, 1 WHERE {_sqlite_counted("NEW")}
        ON CONFLICT ({KEY}) DO UPDATE SET
            events = events + 1, revenue_micros = revenue_micros + excluded.revenue_micros;"""


def _sqlite_remove() -> str:
    # UPDATE only: a missing row (tables emptied in another order) is nothing to take from.
    key = _sqlite_key("OLD")
    match = " AND ".join(
        f"{column} = {expr}" for column, expr in zip(KEY.split(", "), key[:6], strict=True)
    )
    return f"""
        UPDATE ad_conversion_stats
        SET events = events - 1, revenue_micros = revenue_micros - {key[6]}
        WHERE {_sqlite_counted("OLD")} AND {match};"""


_CHANGED = (
    "(OLD.status IN {c}) IS NOT (NEW.status IN {c}) "
    "OR (OLD.status IN {n}) IS NOT (NEW.status IN {n}) "
    "OR OLD.event_name IS NOT NEW.event_name OR OLD.ctwa_clid IS NOT NEW.ctwa_clid "
    "OR OLD.custom_data IS NOT NEW.custom_data OR OLD.waba_id IS NOT NEW.waba_id"
).format(c=CREDITED, n="('failed', 'expired')")


def _sqlite_statements() -> list[str]:
    return [
        f"CREATE TRIGGER conversions_stats_insert AFTER INSERT ON conversions "
        f"BEGIN {_sqlite_add()} END",
        f"CREATE TRIGGER conversions_stats_update AFTER UPDATE ON conversions "
        f"WHEN {_CHANGED} BEGIN {_sqlite_remove()} {_sqlite_add()} END",
        f"CREATE TRIGGER conversions_stats_delete AFTER DELETE ON conversions "
        f"BEGIN {_sqlite_remove()} END",
    ]


# Every transaction that changes a rollup takes this lock first, until it commits: the
# processors and the dispatcher change the same few rows (an ad's day) in their own orders,
# and row locks taken in two orders deadlock (measured: hundreds a minute with two
# processors). 0009's click rollup takes the same lock.
ROLLUP_LOCK = 7_366_001

# --- PostgreSQL: a key function and one trigger function --------------------------------------

_PG_KEY = f"""
CREATE OR REPLACE FUNCTION waconv_conversion_stat_key(
    p_waba text, p_clid text, p_event text, p_status text, p_data jsonb
) RETURNS TABLE (
    k_waba text, k_source text, k_day text, k_event text, k_outcome text, k_currency text,
    k_revenue bigint
) LANGUAGE sql STABLE AS $$
    SELECT p_waba, coalesce(c.source_id, ''),
           to_char(c.clicked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), p_event,
           CASE WHEN p_status IN {CREDITED} THEN 'credited' ELSE 'not_sent' END,
           CASE WHEN p_event = 'Purchase'
                THEN coalesce(left(upper(p_data ->> 'currency'), 8), '') ELSE '' END,
           CASE WHEN p_event = 'Purchase' AND jsonb_typeof(p_data -> 'value') = 'number'
                     AND abs((p_data ->> 'value')::numeric) < 1e12
                THEN round((p_data ->> 'value')::numeric * 1000000)::bigint ELSE 0 END
    FROM (SELECT cl.source_id, cl.clicked_at FROM clicks cl WHERE cl.ctwa_clid = p_clid
          ORDER BY cl.clicked_at, cl.id LIMIT 1) AS c
    WHERE p_status IN {COUNTED}
$$"""

_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION waconv_conversion_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({ROLLUP_LOCK});
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE ad_conversion_stats s
        SET events = s.events - 1, revenue_micros = s.revenue_micros - k.k_revenue
        FROM waconv_conversion_stat_key(
            OLD.waba_id, OLD.ctwa_clid, OLD.event_name, OLD.status, OLD.custom_data) k
        WHERE s.waba_id = k.k_waba AND s.source_id = k.k_source AND s.day = k.k_day
          AND s.event_name = k.k_event AND s.outcome = k.k_outcome
          AND s.currency = k.k_currency;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO ad_conversion_stats ({KEY}, revenue_micros, events)
        SELECT k.*, 1 FROM waconv_conversion_stat_key(
            NEW.waba_id, NEW.ctwa_clid, NEW.event_name, NEW.status, NEW.custom_data) k
        ON CONFLICT ({KEY}) DO UPDATE SET
            events = ad_conversion_stats.events + 1,
            revenue_micros = ad_conversion_stats.revenue_micros + EXCLUDED.revenue_micros;
    END IF;
    RETURN NULL;
END $$"""


def _pg_statements() -> list[str]:
    changed = _CHANGED.replace(" IS NOT ", " IS DISTINCT FROM ")
    run = "FOR EACH ROW EXECUTE FUNCTION waconv_conversion_stats()"
    return [
        _PG_KEY,
        _PG_FUNCTION,
        f"CREATE TRIGGER conversions_stats_insert AFTER INSERT ON conversions {run}",
        f"CREATE TRIGGER conversions_stats_update AFTER UPDATE ON conversions "
        f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION waconv_conversion_stats()",
        f"CREATE TRIGGER conversions_stats_delete AFTER DELETE ON conversions {run}",
    ]


def create_triggers() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in _pg_statements() if postgresql else _sqlite_statements():
        op.execute(statement)


def drop_triggers() -> None:
    for name in ("insert", "update", "delete"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS conversions_stats_{name} ON conversions")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS conversions_stats_{name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS waconv_conversion_stats()")
        op.execute(
            "DROP FUNCTION IF EXISTS waconv_conversion_stat_key(text, text, text, text, jsonb)"
        )


def _backfill() -> None:
    """The conversions already stored, counted once through the same key."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"INSERT INTO ad_conversion_stats ({KEY}, revenue_micros, events) "
            "SELECT k.k_waba, k.k_source, k.k_day, k.k_event, k.k_outcome, k.k_currency, "
            "sum(k.k_revenue), count(*) FROM conversions v CROSS JOIN LATERAL "
            "waconv_conversion_stat_key(v.waba_id, v.ctwa_clid, v.event_name, v.status, "
            "v.custom_data) k GROUP BY 1, 2, 3, 4, 5, 6"
        )
        return
    op.execute(
        f"INSERT INTO ad_conversion_stats ({KEY}, revenue_micros, events) "
        f"SELECT k1, k2, k3, k4, k5, k6, sum(k7), count(*) FROM ("
        f"SELECT {', '.join(f'{e} AS k{i}' for i, e in enumerate(_sqlite_key('v'), 1))} "
        f"FROM conversions v WHERE {_sqlite_counted('v')}) GROUP BY 1, 2, 3, 4, 5, 6"
    )


def upgrade() -> None:
    op.create_table(
        "ad_conversion_stats",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("waba_id", sa.String(length=32), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("event_name", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("revenue_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ad_conversion_stats")),
        sa.UniqueConstraint(
            "waba_id",
            "source_id",
            "day",
            "event_name",
            "outcome",
            "currency",
            name=op.f("uq_ad_conversion_stats_waba_id"),
        ),
    )
    op.create_index("ix_ad_conversion_stats_day", "ad_conversion_stats", ["day"])
    op.create_index("ix_clicks_clicked_at", "clicks", ["clicked_at"])
    create_triggers()
    _backfill()


def downgrade() -> None:
    drop_triggers()
    op.drop_index("ix_clicks_clicked_at", table_name="clicks")
    op.drop_index("ix_ad_conversion_stats_day", table_name="ad_conversion_stats")
    op.drop_table("ad_conversion_stats")
