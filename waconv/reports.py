"""What each ad brought: clicks, conversations and the conversions credited to those clicks.

The database does the counting from rollups that triggers keep, so the figures are exact and
the answer costs the same whatever the volume: clicks and conversations from
``ad_click_stats`` (migration 0009), conversions from ``ad_conversion_stats`` (per ad and
click day, migration 0007). A conversion is credited to the ad of the first click of its
``ctwa_clid``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from waconv.clock import isoformat, utcnow
from waconv.errors import APIError
from waconv.models import META_ID, AdClickStat, AdConversionStat, Click, Conversation

# A report without dates covers the last 30 days: what an operator asks for first.
DEFAULT_DAYS = 30
# A wider range is one query too many for an interactive page; ask twice instead.
MAX_DAYS = 3660
# The rollup keeps revenue in millionths: exact for any currency's minor units (three
# decimals at most in ISO 4217), on SQLite too.
REVENUE_SCALE = 1_000_000
PURCHASE = "Purchase"


@dataclass(frozen=True)
class ReportQuery:
    since: date
    until: date
    waba_id: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str | None], *, today: date | None = None) -> ReportQuery:
        today = today or utcnow().date()
        until = _date("until", args.get("until")) or today
        since = _date("since", args.get("since")) or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise APIError(400, "invalid_range", "since is after until", field="since")
        if (until - since).days >= MAX_DAYS:
            raise APIError(
                400, "invalid_range", f"at most {MAX_DAYS} days per report", field="since"
            )
        waba_id = args.get("waba_id")
        if waba_id is not None and not (
            waba_id.isascii() and waba_id.isdigit() and len(waba_id) <= META_ID
        ):
            raise APIError(400, "invalid_parameter", "waba_id is a number", field="waba_id")
        return cls(since, until, waba_id)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:  # exclusive
        return datetime.combine(self.until + timedelta(days=1), time.min, tzinfo=UTC)


def _date(name: str, raw: str | None) -> date | None:
    if raw is None:
        return None
    if len(raw) == 10 and raw.isascii():  # fromisoformat also takes 20261101 and weeks
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise APIError(400, "invalid_parameter", f"{name} must be a date YYYY-MM-DD", field=name)


@dataclass
class AdRow:
    source_id: str | None
    source_type: str | None = None
    source_url: str | None = None
    headline: str | None = None
    clicks: int = 0
    conversations: int = 0
    events: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, Decimal] = field(default_factory=dict)
    not_sent: int = 0
    first_click_at: datetime | None = None
    last_click_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "source_type": self.source_type,
            "source_url": self.source_url,
            "headline": self.headline,
            "clicks": self.clicks,
            "conversations": self.conversations,
            "events": dict(sorted(self.events.items())),
            "revenue": {k: json_amount(v) for k, v in sorted(self.revenue.items())},
            "not_sent": self.not_sent,
            "first_click_at": isoformat(self.first_click_at),
            "last_click_at": isoformat(self.last_click_at),
        }


@dataclass
class AdsReport:
    query: ReportQuery
    items: list[AdRow]

    @property
    def totals(self) -> dict[str, Any]:
        events: dict[str, int] = {}
        revenue: dict[str, Decimal] = {}
        for row in self.items:
            for name, count in row.events.items():
                events[name] = events.get(name, 0) + count
            for currency, amount in row.revenue.items():
                revenue[currency] = revenue.get(currency, Decimal(0)) + amount
        return {
            "clicks": sum(row.clicks for row in self.items),
            "conversations": sum(row.conversations for row in self.items),
            "events": dict(sorted(events.items())),
            "revenue": dict(sorted(revenue.items())),
            "not_sent": sum(row.not_sent for row in self.items),
        }

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        totals["revenue"] = {k: json_amount(v) for k, v in totals["revenue"].items()}
        return {
            "since": self.query.since.isoformat(),
            "until": self.query.until.isoformat(),
            "waba_id": self.query.waba_id,
            "items": [row.to_dict() for row in self.items],
            "totals": totals,
        }

    def event_names(self) -> list[str]:
        return sorted({name for row in self.items for name in row.events})

    def currencies(self) -> list[str]:
        return sorted({c for row in self.items for c in row.revenue})

    def to_csv(self) -> str:
        names, currencies = self.event_names(), self.currencies()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(
            [
                "source_id",
                "headline",
                "source_type",
                "source_url",
                "clicks",
                "conversations",
                "not_sent",
                *(f"events.{n}" for n in names),
                *(f"revenue.{c}" for c in currencies),
            ]
        )
        for row in self.items:
            writer.writerow(
                [
                    *(_csv_text(v) for v in (row.source_id, row.headline)),
                    *(_csv_text(v) for v in (row.source_type, row.source_url)),
                    row.clicks,
                    row.conversations,
                    row.not_sent,
                    *(row.events.get(n, 0) for n in names),
                    *(_plain(row.revenue.get(c, Decimal(0))) for c in currencies),
                ]
            )
        return out.getvalue()


def _csv_text(value: str | None) -> str:
    # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection): quote it.
    text = value or ""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _plain(amount: Decimal) -> str:
    text = format(amount.normalize(), "f")
    return text


def json_amount(amount: Decimal) -> int | float:
    """A sum of money as a JSON number: an integer when whole, else the nearest float (whose
    shortest form is the decimal itself for any amount with up to 15 digits)."""
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def ads_report(session: Session, query: ReportQuery) -> AdsReport:
    rows: dict[str | None, AdRow] = {}
    # Exact distinct counts from the rollup: a chain (the clicks of one click id, or of one
    # conversation, on one ad) is in the range when a click is and the one before is not.
    per_ad = (
        select(AdClickStat.source_id, AdClickStat.kind, func.sum(AdClickStat.count))
        .where(*_in_range(AdClickStat, query), AdClickStat.prev_day < query.since.isoformat())
        .group_by(AdClickStat.source_id, AdClickStat.kind)
    )
    for source, kind, count in session.execute(per_ad):
        if not count:
            continue
        source_id = source or None  # the rollup keeps "" for a click without a source id
        row = rows.setdefault(source_id, AdRow(source_id))
        if kind == AdClickStat.CLICK:
            row.clicks = int(count)
        else:
            row.conversations = int(count)
    _describe(session, query, rows)

    stats = select(
        AdConversionStat.source_id,
        AdConversionStat.outcome,
        AdConversionStat.event_name,
        AdConversionStat.currency,
        func.sum(AdConversionStat.events),
        func.sum(AdConversionStat.revenue_micros),
    ).where(*_in_range(AdConversionStat, query))
    stats = stats.group_by(
        AdConversionStat.source_id,
        AdConversionStat.outcome,
        AdConversionStat.event_name,
        AdConversionStat.currency,
    )
    for source, outcome, event_name, currency, count, micros in session.execute(stats):
        if not count:
            continue
        source_id = source or None  # the rollup keeps "" for a click without a source id
        row = rows.setdefault(source_id, AdRow(source_id))
        if outcome == AdConversionStat.NOT_SENT:
            row.not_sent += int(count)
            continue
        row.events[event_name] = row.events.get(event_name, 0) + int(count)
        if event_name == PURCHASE and currency:
            money = Decimal(int(micros)) / REVENUE_SCALE
            row.revenue[currency] = row.revenue.get(currency, Decimal(0)) + money
    items = sorted(rows.values(), key=lambda r: (-r.clicks, r.source_id or ""))
    return AdsReport(query, items)


def _in_range(rollup: type[AdConversionStat] | type[AdClickStat], query: ReportQuery) -> list[Any]:
    """A rollup's rows of the query's days (and account)."""
    where = [rollup.day >= query.since.isoformat(), rollup.day <= query.until.isoformat()]
    if query.waba_id is not None:
        where.append(rollup.waba_id == query.waba_id)
    return where


def _describe(session: Session, query: ReportQuery, rows: dict[str | None, AdRow]) -> None:
    """Each ad's first and last click of the range, and its text as the last click showed it:
    two probes of the index on (source_id, clicked_at) per ad, all in one statement."""
    clicks = aliased(Click)
    in_range = [clicks.clicked_at >= query.start, clicks.clicked_at < query.end]
    if query.waba_id is not None:
        mine = select(Conversation.id).where(Conversation.waba_id == query.waba_id)
        in_range.append(clicks.conversation_id.in_(mine))
    ads = (
        select(AdClickStat.source_id)
        .where(*_in_range(AdClickStat, query), AdClickStat.source_id != "")
        .distinct()
        .subquery()
    )

    def probes(source: Any) -> tuple[Any, Any]:
        where = [*in_range, source]
        first = select(clicks.clicked_at).where(*where).order_by(clicks.clicked_at).limit(1)
        last = select(clicks.id).where(*where).order_by(clicks.clicked_at.desc()).limit(1)
        return first.scalar_subquery(), last.scalar_subquery()

    found = [
        tuple(r)
        for r in session.execute(
            select(ads.c.source_id, *probes(clicks.source_id == ads.c.source_id))
        )
    ]
    if None in rows:  # the clicks without a source id: NULL is equal to nothing
        found.append((None, *session.execute(select(*probes(clicks.source_id.is_(None)))).one()))
    first_of = {source: first for source, first, _ in found}
    last_of = {last: source for source, _, last in found if last is not None}
    described = select(
        Click.id, Click.clicked_at, Click.source_type, Click.source_url, Click.headline
    ).where(Click.id.in_(list(last_of)))
    for click_id, at, source_type, source_url, headline in session.execute(described):
        row = rows.get(last_of[click_id])
        if row is not None:
            row.first_click_at = first_of[last_of[click_id]]
            row.last_click_at, row.source_type = at, source_type
            row.source_url, row.headline = source_url, headline


@dataclass(frozen=True)
class Day:
    day: date
    clicks: int
    conversions: int


def daily(session: Session, query: ReportQuery) -> list[Day]:
    """Per UTC day of the click: clicks, and the conversions (pending or sent) they brought.
    Every day of the range is listed, zeros included, so a chart's x axis is the calendar."""
    # A click id counts on a day when a click of it is that day and the one before is not.
    clicks: dict[str, int] = dict(
        session.execute(
            select(AdClickStat.day, func.sum(AdClickStat.count))
            .where(
                *_in_range(AdClickStat, query),
                AdClickStat.kind == AdClickStat.CLICK,
                AdClickStat.prev_day < AdClickStat.day,
            )
            .group_by(AdClickStat.day)
        ).all()
    )
    credited = (
        select(AdConversionStat.day, func.sum(AdConversionStat.events))
        .where(
            *_in_range(AdConversionStat, query),
            AdConversionStat.outcome == AdConversionStat.CREDITED,
        )
        .group_by(AdConversionStat.day)
    )
    conversions: dict[str, int] = dict(session.execute(credited).all())
    days = []
    current = query.since
    while current <= query.until:
        key = current.isoformat()
        days.append(Day(current, int(clicks.get(key, 0)), int(conversions.get(key, 0))))
        current += timedelta(days=1)
    return days
