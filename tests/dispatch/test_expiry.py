"""Meta's 7-day rule: nothing older ever reaches Meta; what cannot make it expires, with why."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import update
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from tests.conftest import WABA_ID
from tests.dispatch.helpers import clid, conversions, enqueue_many, enqueue_one, one, setup_account
from waconv.clock import from_unix, to_unix, utcnow
from waconv.conversions import queue
from waconv.conversions.dispatcher import SEND_MARGIN, Dispatcher, DispatchStats
from waconv.conversions.events import MAX_EVENT_AGE
from waconv.conversions.lease import give_back
from waconv.conversions.schedule import send_limit, unix_limit
from waconv.db import time_binder
from waconv.graph.client import GraphClient
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services


def assert_nothing_too_old_reached_meta(fake: FakeGraph, sent_at: list[Any]) -> None:
    """Each events request, with the clock when it was made: no event older than 7 days."""
    requests = fake.events_requests()
    assert len(requests) == len(sent_at)
    for request, now in zip(requests, sent_at, strict=True):
        for event in request["json"]["data"]:
            assert now - from_unix(event["event_time"]) < MAX_EVENT_AGE


class ClockedGraph(GraphClient):
    """Notes the (frozen) time of every events request; optionally lets time pass during it."""

    def __init__(
        self, fake: FakeGraph, freezer: FrozenDateTimeFactory, tick: timedelta = timedelta(0)
    ) -> None:
        super().__init__(fake.url, "v26.0", timeout=5)
        self.freezer, self.tick = freezer, tick
        self.times: list[Any] = []

    def send_events(self, *args: Any, **kwargs: Any) -> Any:
        self.times.append(utcnow())
        try:
            return super().send_events(*args, **kwargs)
        finally:
            self.freezer.tick(self.tick)  # a slow Meta


def test_an_event_that_keeps_failing_expires_before_it_is_7_days_old(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(retry_base_seconds=60)
    services: Services = app.extensions["waconv"]
    setup_account(services)
    event_time = utcnow() - timedelta(days=6, hours=22)
    enqueue_one(services, "doomed", event_time=event_time)
    fake_graph.fail_next(1000, "http503_json")
    graph = ClockedGraph(fake_graph, freezer)
    dispatcher = Dispatcher(services, graph=graph)

    for _ in range(100):
        dispatcher.run_once()
        row = one(services, "doomed")
        if row.status != Conversion.PENDING:
            break
        freezer.move_to(row.next_attempt_at)
    graph.close()

    assert row.status == Conversion.EXPIRED
    assert utcnow() < event_time + MAX_EVENT_AGE  # expired in time, not after the fact
    assert row.last_error is not None
    assert row.last_error.startswith("expired: Meta's 7-day limit on event_time would pass")
    assert "temporary failure" in row.last_error  # and why it could not be sent
    assert row.last_error_code == 2
    assert row.attempts > 5
    assert_nothing_too_old_reached_meta(fake_graph, graph.times)

    # Never sent after: not even when Meta is fine again.
    fake_graph.reset()
    freezer.tick(timedelta(days=1))
    assert Dispatcher(services).run_once().requests == 0
    assert not fake_graph.requests


def test_an_event_6_days_23_hours_old_is_still_sent(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_one(ready, "late-but-fine", event_time=utcnow() - timedelta(days=6, hours=23))

    stats = Dispatcher(ready).run_once()

    assert stats.sent == 1
    assert one(ready, "late-but-fine").status == Conversion.SENT
    assert fake_graph.accepted_event_ids() == {"late-but-fine": 1}


def test_an_event_that_became_stale_while_pending_expires_unsent(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 3)  # an hour old; nobody dispatched for a week
    freezer.tick(MAX_EVENT_AGE)

    stats = Dispatcher(ready).run_once()

    assert (stats.expired, stats.requests) == (3, 0)
    assert not fake_graph.requests
    for row in conversions(ready):
        assert row.status == Conversion.EXPIRED
        assert row.last_error is not None
        # Never tried: no "previous error" to look for.
        assert row.last_error.startswith("expired: never sent: Meta's 7-day limit")
        assert "previous error" not in row.last_error


def test_an_event_tried_before_it_became_stale_points_at_its_previous_error(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 1)
    with ready.db.transaction() as session:
        session.execute(update(Conversion).values(attempts=2, last_error="will retry: ..."))
    freezer.tick(MAX_EVENT_AGE)

    assert Dispatcher(ready).run_once().expired == 1
    (row,) = conversions(ready)
    assert row.last_error is not None
    assert row.last_error.startswith("expired: not delivered before Meta's 7-day limit")
    assert "previous error" in row.last_error


def test_stale_events_in_a_lapsed_lease_expire(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """A dispatcher died holding the account; by the time its lease ran out the events were
    too old."""
    enqueue_many(ready, 2, event_time=utcnow() - timedelta(days=6, hours=23, minutes=59))
    with ready.db.transaction() as session:
        assert Dispatcher(ready)._take_lease(session, WABA_ID) is not None
    assert Dispatcher(ready).run_once() == DispatchStats()  # not while the lease lasts
    freezer.tick(timedelta(minutes=2))

    assert Dispatcher(ready).run_once().expired == 2
    assert {r.status for r in conversions(ready)} == {Conversion.EXPIRED}
    assert not fake_graph.requests


def test_too_close_to_the_limit_is_not_sent_and_does_not_hold_back_the_others(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    fresh = enqueue_many(ready, 10)
    almost = utcnow() - MAX_EVENT_AGE + SEND_MARGIN / 2  # valid now, not by the time it arrives
    enqueue_one(ready, "almost-7-days", event_time=almost)

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.expired, stats.requests) == (10, 1, 1)
    assert one(ready, "almost-7-days").status == Conversion.EXPIRED
    assert set(fake_graph.accepted_event_ids()) == set(fresh)
    assert [r["status"] for r in fake_graph.events_requests()] == [200]  # no rejection at all


def test_an_event_that_ages_past_the_limit_during_a_long_split_expires_not_fails(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """Meta is slow (3 minutes a request) while a batch is bisected for a bad click id: the
    event that crosses the limit meanwhile must not be sent (Meta would reject its whole batch
    and it would end `failed`, with its neighbours split off for nothing)."""
    good = enqueue_many(ready, 7)
    fake_graph.invalid_clids.add(clid("evt", 0))
    enqueue_one(ready, "near-limit", event_time=utcnow() - MAX_EVENT_AGE + timedelta(minutes=3))
    graph = ClockedGraph(fake_graph, freezer, tick=timedelta(minutes=3))

    Dispatcher(ready, graph=graph).run_once()
    graph.close()

    rows = {r.event_id: r for r in conversions(ready)}
    assert rows["near-limit"].status == Conversion.EXPIRED
    assert rows["near-limit"].last_error is not None
    assert "7-day limit" in rows["near-limit"].last_error
    assert rows[good[0]].status == Conversion.FAILED
    assert {rows[e].status for e in good[1:]} == {Conversion.SENT}
    assert_nothing_too_old_reached_meta(fake_graph, graph.times)
    # Every rejection was for the bad click id, none for an old event_time.
    for request in fake_graph.events_requests():
        if request["status"] != 200:
            clids = [e["user_data"]["ctwa_clid"] for e in request["json"]["data"]]
            assert clid("evt", 0) in clids


def test_held_events_that_age_out_expire(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(access_token="")
    services: Services = app.extensions["waconv"]
    setup_account(services)
    enqueue_one(services, "held", event_time=utcnow() - timedelta(days=6, hours=23, minutes=30))
    assert Dispatcher(services).run_once().held == 1

    freezer.tick(timedelta(minutes=30))
    stats = Dispatcher(services).run_once()

    assert stats.expired == 1
    assert one(services, "held").status == Conversion.EXPIRED
    assert not fake_graph.requests


def test_an_account_held_at_a_sweep_is_swept_by_that_dispatcher_when_it_holds_it(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """Dispatchers taking a busy account in turn may each find it held at their sweep: the one
    that skipped it sweeps it itself, before its first claim, the next time it holds it."""
    enqueue_many(ready, 2, event_time=utcnow() - timedelta(days=6, hours=23, minutes=59))
    other, mine = Dispatcher(ready), Dispatcher(ready)
    with ready.db.transaction() as session:
        held = other._take_lease(session, WABA_ID)
    assert held is not None
    freezer.tick(timedelta(seconds=1))  # too old to send now; the other's lease still runs

    assert mine.run_once() == DispatchStats()  # held: not swept, not sent
    assert {r.status for r in conversions(ready)} == {Conversion.PENDING}
    assert Dispatcher(ready)._dispatch_account(WABA_ID).expired == 0  # held still: nothing
    give_back(ready.db, held)

    assert mine._dispatch_account(WABA_ID).expired == 2
    assert {r.status for r in conversions(ready)} == {Conversion.EXPIRED}
    assert not fake_graph.requests


def test_the_claim_gives_each_event_time_in_the_unix_seconds_sent_to_meta(
    ready: Services,
) -> None:
    # The database computes them (unixepoch, date_part): the same truncated seconds as
    # clock.to_unix, microseconds and all.
    second = (utcnow() - timedelta(days=6)).replace(microsecond=0)
    times = [second + timedelta(microseconds=us) for us in (0, 1, 499_999, 999_500, 999_999)]
    for i, moment in enumerate(times):
        enqueue_many(ready, 1, prefix=f"t{i}-", event_time=moment)
    now = utcnow()
    rows = queue.claim(ready.db, WABA_ID, 10, now=now, oldest=send_limit(now)).rows
    assert [r.event_unix for r in rows] == [to_unix(m) for m in times]


def test_the_send_limit_in_seconds_never_lets_a_late_event_through(
    freezer: FrozenDateTimeFactory,
) -> None:
    for fraction in (0, 1, 250_000, 999_999):
        freezer.move_to(utcnow().replace(microsecond=fraction))
        limit = send_limit(utcnow())
        for offset in (-1_000_001, -1, 0, 1, 999_999, 1_000_000):
            event_time = limit + timedelta(microseconds=offset)
            fresh = to_unix(event_time) >= unix_limit(utcnow())
            if event_time < limit:
                assert not fresh, (fraction, offset)
            elif event_time - limit >= timedelta(seconds=1):
                assert fresh, (fraction, offset)  # late by under a second, at most


def test_both_forms_of_sqlite_unix_seconds_agree_with_python(
    request: pytest.FixtureRequest,
) -> None:
    # unixepoch() (SQLite 3.38+) and the strftime('%s') older SQLite gets, on times stored as
    # the ORM stores them.
    bind = time_binder(sqlite_dialect())
    times = [datetime(2026, 12, 1, 23, 59, 59, us, tzinfo=UTC) for us in (0, 1, 999_999)]
    times.append(datetime(2031, 1, 1, tzinfo=UTC))
    db = sqlite3.connect(":memory:")
    request.addfinalizer(db.close)
    db.execute("CREATE TABLE conversions (event_time DATETIME)")
    db.executemany("INSERT INTO conversions VALUES (?)", [(bind(t),) for t in times])
    for form in queue.SQLITE_UNIX:
        if form.startswith("unixepoch") and sqlite3.sqlite_version_info < (3, 38):
            continue
        query = f"SELECT {form} FROM conversions ORDER BY rowid"  # noqa: S608 (our constant)
        got = [unix for (unix,) in db.execute(query)]
        assert got == [to_unix(t) for t in times], form
