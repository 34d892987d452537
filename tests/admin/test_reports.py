"""GET /admin/reports/ads: exact figures per ad, from the database, in JSON and CSV."""

from __future__ import annotations

import csv
import io
import itertools
import random
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import delete, distinct, func, insert, select, update
from sqlalchemy.orm import Session

from tests import payloads as p
from tests.admin.conftest import Admin
from tests.conftest import PHONE_NUMBER_ID, WABA_ID
from waconv import reports, schema
from waconv.db import make_engine
from waconv.models import Account, AdClickStat, Click, Conversation, Conversion
from waconv.services import Services

_ids = itertools.count(1)
OTHER_WABA = "555000111222333"


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


class Seed:
    """Rows written as the webhook path and the dispatcher would have left them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        with services.db.transaction() as session:
            session.add_all([Account(waba_id=WABA_ID), Account(waba_id=OTHER_WABA)])

    def conversation(self, waba_id: str = WABA_ID) -> int:
        with self.services.db.transaction() as session:
            conv = Conversation(
                waba_id=waba_id, phone_number_id=PHONE_NUMBER_ID, wa_id=f"1650{next(_ids):07d}"
            )
            session.add(conv)
            session.flush()
            return conv.id

    def click(self, conversation_id: int, clid: str, ad: str, when: datetime) -> None:
        with self.services.db.transaction() as session:
            session.add(
                Click(
                    conversation_id=conversation_id,
                    message_wamid=p.wamid(),
                    ctwa_clid=clid,
                    source_id=ad,
                    source_type="ad",
                    source_url=f"https://fb.me/{ad}",
                    headline=f"Ad {ad}",
                    referral={"source_id": ad},
                    clicked_at=when,
                )
            )

    def conversion(
        self,
        conversation_id: int,
        clid: str,
        event_name: str,
        status: str = Conversion.SENT,
        waba_id: str = WABA_ID,
        **custom_data: Any,
    ) -> None:
        with self.services.db.transaction() as session:
            session.add(
                Conversion(
                    event_id=f"e{next(_ids)}",
                    waba_id=waba_id,
                    conversation_id=conversation_id,
                    ctwa_clid=clid,
                    event_name=event_name,
                    event_time=at(20),
                    custom_data=custom_data or None,
                    source="admin",
                    status=status,
                )
            )


@pytest.fixture
def seed(services: Services) -> Seed:
    return Seed(services)


@pytest.fixture
def ads(seed: Seed) -> Seed:
    """Ad A: three clicks in two conversations; ad B: one click; one click outside the range."""
    c1, c2, c3 = seed.conversation(), seed.conversation(), seed.conversation()
    seed.click(c1, "clid-a1", "A", at(2, 9))
    seed.click(c1, "clid-a2", "A", at(5))
    seed.click(c2, "clid-a3", "A", at(10, 23))
    seed.click(c3, "clid-b1", "B", at(3))
    seed.click(c3, "clid-old", "B", datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    seed.conversion(c1, "clid-a1", "LeadSubmitted")
    seed.conversion(c1, "clid-a2", "Purchase", value=19.99, currency="USD")
    seed.conversion(c2, "clid-a3", "Purchase", Conversion.PENDING, value=0.01, currency="usd")
    seed.conversion(c2, "clid-a3", "Purchase", value=100, currency="EUR")
    seed.conversion(c2, "clid-a3", "Purchase", Conversion.FAILED, value=5, currency="USD")
    seed.conversion(c2, "clid-a3", "LeadSubmitted", Conversion.EXPIRED)
    seed.conversion(c3, "clid-b1", "Purchase", value=0.1, currency="USD")
    seed.conversion(c3, "clid-b1", "Purchase", value=0.2, currency="USD")
    seed.conversion(c3, "clid-old", "Purchase", value=1000, currency="USD")
    return seed


def report(admin: Admin, **query: str) -> dict[str, Any]:
    r = admin.get("/admin/reports/ads", **query)
    assert r.status_code == 200, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


def test_report_counts_each_ad_exactly(admin: Admin, ads: Seed) -> None:
    body = report(admin, since="2026-11-01", until="2026-11-30")
    by_ad = {item["source_id"]: item for item in body["items"]}
    assert by_ad["A"] == {
        "source_id": "A",
        "source_type": "ad",
        "source_url": "https://fb.me/A",
        "headline": "Ad A",
        "clicks": 3,
        "conversations": 2,
        "events": {"LeadSubmitted": 1, "Purchase": 3},
        "revenue": {"EUR": 100, "USD": 20},
        "not_sent": 2,
        "first_click_at": "2026-11-02T09:00:00Z",
        "last_click_at": "2026-11-10T23:00:00Z",
    }
    # 0.1 + 0.2 summed exactly, and the click of October 31st left out with its 1000 USD.
    assert by_ad["B"]["revenue"] == {"USD": 0.3}
    assert by_ad["B"]["clicks"] == 1
    assert body["totals"] == {
        "clicks": 4,
        "conversations": 3,
        "events": {"LeadSubmitted": 1, "Purchase": 5},
        "revenue": {"EUR": 100, "USD": 20.3},
        "not_sent": 2,
    }


def test_dates_are_inclusive_days_of_the_click(admin: Admin, ads: Seed) -> None:
    body = report(admin, since="2026-11-10", until="2026-11-10")
    assert [(i["source_id"], i["clicks"]) for i in body["items"]] == [("A", 1)]
    assert report(admin, since="2026-10-31", until="2026-10-31")["totals"]["revenue"] == {
        "USD": 1000
    }


def test_a_click_id_seen_twice_credits_its_conversions_once(admin: Admin, seed: Seed) -> None:
    conv = seed.conversation()
    seed.click(conv, "clid-1", "A", at(2))
    seed.click(conv, "clid-1", "A", at(3))  # the same referral on a second message
    seed.conversion(conv, "clid-1", "Purchase", value=10, currency="USD")
    item = report(admin, since="2026-11-01", until="2026-11-30")["items"][0]
    assert (item["clicks"], item["events"], item["revenue"]) == (1, {"Purchase": 1}, {"USD": 10})


def test_filter_by_account(admin: Admin, seed: Seed) -> None:
    mine, theirs = seed.conversation(), seed.conversation(OTHER_WABA)
    seed.click(mine, "clid-m", "A", at(2))
    seed.click(theirs, "clid-t", "B", at(2))
    body = report(admin, since="2026-11-01", until="2026-11-30", waba_id=OTHER_WABA)
    assert [i["source_id"] for i in body["items"]] == ["B"]


def test_csv_has_a_column_per_event_and_currency(admin: Admin, ads: Seed) -> None:
    r = admin.get("/admin/reports/ads", since="2026-11-01", until="2026-11-30", format="csv")
    assert r.status_code == 200
    assert r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert list(rows[0]) == [
        "source_id",
        "headline",
        "source_type",
        "source_url",
        "clicks",
        "conversations",
        "not_sent",
        "events.LeadSubmitted",
        "events.Purchase",
        "revenue.EUR",
        "revenue.USD",
    ]
    a, b = rows
    assert (a["source_id"], a["clicks"], a["events.Purchase"], a["revenue.USD"]) == (
        "A",
        "3",
        "3",
        "20",
    )
    assert (b["source_id"], b["revenue.USD"], b["revenue.EUR"]) == ("B", "0.3", "0")


def test_csv_cells_are_never_spreadsheet_formulas(admin: Admin, seed: Seed) -> None:
    conv = seed.conversation()
    seed.click(conv, "clid-1", "=HYPERLINK(1)", at(2))
    r = admin.get("/admin/reports/ads", since="2026-11-01", until="2026-11-30", format="csv")
    row = next(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert row["source_id"] == "'=HYPERLINK(1)"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "2026-13-01"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"since": "2026-11-02", "until": "2026-11-01"}, "since"),
        ({"waba_id": "abc"}, "waba_id"),
        ({"format": "xml"}, "format"),
        ({"sinse": "2026-11-01"}, "sinse"),
    ],
)
def test_bad_parameters_are_refused(
    admin: Admin, query: dict[str, str], field: str, db_url: str
) -> None:
    r = admin.get("/admin/reports/ads", **query)
    assert r.status_code == 400
    assert r.get_json()["error"]["field"] == field


def test_needs_the_admin_token(client: Any) -> None:
    assert client.get("/admin/reports/ads").status_code == 401


def test_a_click_from_a_real_webhook_is_reported(
    admin: Admin, post_webhook: Callable[..., Any]
) -> None:
    # p.message's timestamp 1750275992 is 2025-06-18 UTC.
    post_webhook(p.delivery(p.message(ref=p.referral())))
    body = report(admin, since="2025-06-18", until="2025-06-18")
    assert [(i["source_id"], i["clicks"], i["conversations"]) for i in body["items"]] == [
        ("120226305854810726", 1, 1)
    ]


def _set(services: Services, **values: Any) -> None:
    with services.db.transaction() as session:
        session.execute(update(Conversion).values(**values))


def test_the_rollup_follows_every_change_of_a_conversion(
    admin: Admin, seed: Seed, services: Services
) -> None:
    conv = seed.conversation()
    seed.click(conv, "clid-1", "A", at(2))
    seed.conversion(conv, "clid-1", "Purchase", Conversion.PENDING, value=10, currency="USD")

    def figures() -> tuple[Any, ...]:
        item = report(admin, since="2026-11-01", until="2026-11-30")["items"][0]
        return item["events"], item["revenue"], item["not_sent"]

    assert figures() == ({"Purchase": 1}, {"USD": 10}, 0)
    _set(services, status=Conversion.SENT)
    assert figures() == ({"Purchase": 1}, {"USD": 10}, 0)
    _set(services, status=Conversion.FAILED)
    assert figures() == ({}, {}, 1)
    _set(services, status=Conversion.PENDING, custom_data={"value": 12.5, "currency": "EUR"})
    assert figures() == ({"Purchase": 1}, {"EUR": 12.5}, 0)
    # The key changed, the outcome's class did not: with and without the status in the UPDATE.
    _set(services, custom_data={"value": 20, "currency": "EUR"})
    assert figures() == ({"Purchase": 1}, {"EUR": 20}, 0)
    _set(services, status=Conversion.SENT, custom_data={"value": 3, "currency": "GBP"})
    assert figures() == ({"Purchase": 1}, {"GBP": 3}, 0)
    _set(services, event_name="QualifiedLead")
    assert figures() == ({"QualifiedLead": 1}, {}, 0)
    _set(services, status=Conversion.EXPIRED)
    assert figures() == ({}, {}, 1)
    _set(services, status="canceled")  # never sent: neither credited nor a failure
    assert figures() == ({}, {}, 0)
    _set(services, status=Conversion.SENT)
    with services.db.transaction() as session:
        session.execute(delete(Conversion))
    assert figures() == ({}, {}, 0)


def test_a_value_that_is_not_a_number_never_breaks_the_outbox(
    admin: Admin, seed: Seed, services: Services
) -> None:
    conv = seed.conversation()
    seed.click(conv, "clid-1", "A", at(2))
    seed.conversion(conv, "clid-1", "Purchase", value="a lot", currency="USD")
    seed.conversion(conv, "clid-1", "Purchase", value=1e300, currency="USD")
    item = report(admin, since="2026-11-01", until="2026-11-30")["items"][0]
    assert (item["events"], item["revenue"]) == ({"Purchase": 2}, {"USD": 0})


def test_the_upgrade_counts_the_conversions_already_stored(db_url: str) -> None:
    # The revision before the report's, filled with Core inserts of the columns it has (the
    # ORM would also write the columns later migrations add).
    engine = make_engine(db_url)
    try:
        schema.downgrade(engine, "0006")
        with engine.begin() as conn:
            conn.execute(insert(Account.__table__).values(waba_id=WABA_ID))
            conv_id = conn.execute(
                insert(Conversation.__table__)
                .values(waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID, wa_id="1")
                .returning(Conversation.__table__.c.id)
            ).scalar_one()
            conn.execute(
                insert(Click.__table__).values(
                    conversation_id=conv_id,
                    message_wamid="wamid.1",
                    ctwa_clid="clid-1",
                    source_id="A",
                    referral={},
                    clicked_at=at(2),
                )
            )
            for n, status in enumerate([Conversion.SENT, Conversion.SENT, Conversion.FAILED]):
                conn.execute(
                    insert(Conversion.__table__).values(
                        event_id=f"e{n}",
                        waba_id=WABA_ID,
                        conversation_id=conv_id,
                        ctwa_clid="clid-1",
                        event_name="Purchase",
                        event_time=at(2),
                        custom_data={"value": 0.1, "currency": "USD"},
                        source="admin",
                        status=status,
                    )
                )
        schema.upgrade(engine)
        with Session(engine) as session:
            got = reports.ads_report(
                session, reports.ReportQuery(date(2026, 11, 1), date(2026, 11, 30))
            )
        [item] = got.to_dict()["items"]
        assert (item["events"], item["revenue"], item["not_sent"]) == (
            {"Purchase": 2},
            {"USD": 0.2},
            1,
        )
        assert (item["clicks"], item["conversations"]) == (1, 1)
    finally:
        schema.upgrade(engine)  # the next tests' schema, whatever failed above
        engine.dispose()


def _counted_from_clicks(services: Services, since: int, until: int) -> dict[Any, Any]:
    """What the report must say, counted the slow way from the clicks themselves."""
    with services.db.transaction() as session:
        rows = session.execute(
            select(
                Click.source_id,
                func.count(distinct(Click.ctwa_clid)),
                func.count(distinct(Click.conversation_id)),
            )
            .where(Click.clicked_at >= at(since, 0), Click.clicked_at < at(until + 1, 0))
            .group_by(Click.source_id)
        ).all()
    return {source: (clicks, convs) for source, clicks, convs in rows}


def _counted_by_report(services: Services, since: int, until: int) -> dict[Any, Any]:
    with services.db.transaction() as session:
        got = reports.ads_report(
            session, reports.ReportQuery(date(2026, 11, since), date(2026, 11, until))
        )
    return {r.source_id: (r.clicks, r.conversations) for r in got.items if r.clicks}


def test_the_click_rollup_is_exact_for_every_range_through_moves_and_deletes(
    seed: Seed, services: Services
) -> None:
    """Click ids and conversations clicked again on later days, on two ads, out of order; then
    a merge moves clicks in bulk and a prune deletes some: every range still counts exactly."""
    rng = random.Random(18)
    convs = [seed.conversation() for _ in range(6)]
    for _ in range(40):
        clid = f"clid-{rng.randrange(12)}"  # the same click id on several days
        seed.click(rng.choice(convs), clid, rng.choice(["A", "B", None]), at(rng.randrange(1, 9)))
    ranges = [(s, u) for s in range(1, 9) for u in range(s, 9)]

    def check() -> None:
        for since, until in ranges:
            assert _counted_by_report(services, since, until) == _counted_from_clicks(
                services, since, until
            ), (since, until)

    check()
    with services.db.transaction() as session:  # a merge moves every click in one statement
        session.execute(
            update(Click).where(Click.conversation_id == convs[0]).values(conversation_id=convs[1])
        )
        session.execute(update(Click).where(Click.id % 7 == 0).values(clicked_at=at(4)))
    check()
    with services.db.transaction() as session:
        session.execute(delete(Click).where(Click.id % 3 == 0))
    check()
    with services.db.transaction() as session:
        session.execute(delete(Click))
    with services.db.transaction() as session:
        assert session.scalar(select(func.sum(AdClickStat.count))) in (0, None)


def test_a_click_before_the_range_does_not_hide_the_same_click_id_in_it(
    admin: Admin, seed: Seed
) -> None:
    conv = seed.conversation()
    seed.click(conv, "clid-1", "A", at(2))
    seed.click(conv, "clid-1", "A", at(5))
    seed.click(conv, "clid-1", "A", at(4))  # arrives late: between the two
    for since, until, clicks in [("02", "02", 1), ("03", "05", 1), ("06", "30", 0)]:
        body = report(admin, since=f"2026-11-{since}", until=f"2026-11-{until}")
        assert body["totals"]["clicks"] == clicks, (since, until)
        assert body["totals"]["conversations"] == clicks


@pytest.mark.postgres_only
def test_two_writers_of_the_rollups_in_opposite_orders_do_not_deadlock(db_url: str) -> None:
    """Two processors insert clicks of one ad on two days in opposite orders: the rollups'
    lock makes the second wait for the first to commit, instead of a deadlock (hundreds a
    minute in the ingest benchmark before it)."""
    import threading

    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Account.__table__).values(waba_id=WABA_ID))
            ids = [
                conn.execute(
                    insert(Conversation.__table__)
                    .values(waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID, wa_id=str(n))
                    .returning(Conversation.__table__.c.id)
                ).scalar_one()
                for n in range(4)
            ]

        def click(conn: Any, n: int, day: int) -> None:
            conn.execute(
                insert(Click.__table__).values(
                    conversation_id=ids[n],
                    message_wamid=f"wamid.{n}",
                    ctwa_clid=f"clid-{n}",
                    source_id="A",
                    referral={},
                    clicked_at=at(day),
                )
            )

        started, go_on, errors = threading.Event(), threading.Event(), []

        def second() -> None:
            try:
                with engine.begin() as conn:
                    click(conn, 1, 3)
                    started.set()
                    go_on.wait(5)
                    click(conn, 3, 2)
            except Exception as exc:
                errors.append(exc)

        with engine.begin() as conn:
            click(conn, 0, 2)
            other = threading.Thread(target=second)
            other.start()
            started.wait(1)  # with the lock, the second writer waits at its first click
            go_on.set()
            click(conn, 2, 3)
        other.join(10)
        assert errors == []
        with engine.connect() as conn:
            counted = conn.execute(
                select(AdClickStat.day, func.sum(AdClickStat.count))
                .where(AdClickStat.kind == "click")
                .group_by(AdClickStat.day)
                .order_by(AdClickStat.day)
            ).all()
        assert [(day, int(n)) for day, n in counted] == [("2026-11-02", 2), ("2026-11-03", 2)]
    finally:
        engine.dispose()
