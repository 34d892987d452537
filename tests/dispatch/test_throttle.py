"""Meta's rate limits back off the account as a whole (every account, for the app's limits),
for Meta's estimate when its usage headers give one; other accounts keep sending."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from click.testing import Result
from flask import Flask
from freezegun.api import FrozenDateTimeFactory

from tests.conftest import WABA_ID
from tests.dispatch.helpers import (
    account,
    assert_released,
    conversions,
    enqueue_many,
    sent_event_ids,
    setup_account,
    status_counts,
)
from tests.dispatch.test_cli import waconv  # noqa: F401 - the fixture
from waconv.accounts.service import list_accounts
from waconv.clock import isoformat, utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.graph.usage import APP_USAGE_HEADER, BUSINESS_USAGE_HEADER, business_usage_header
from waconv.models import Conversion
from waconv.services import Services

OTHER = "300000000000009"  # a second account, sorted after WABA_ID
REGAIN_MINUTES = 30


def two_accounts(services: Services, events: int = 6) -> tuple[list[str], list[str]]:
    setup_account(services)
    setup_account(services, OTHER, "400000000000009")
    mine = enqueue_many(services, events, prefix="mine")
    theirs = enqueue_many(services, events, prefix="theirs", waba_id=OTHER)
    return mine, theirs


def test_an_account_limit_holds_that_account_for_metas_estimate_and_no_other(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    assert WABA_ID < OTHER
    mine, theirs = two_accounts(services)
    usage = business_usage_header(WABA_ID, percent=100, regain_minutes=REGAIN_MINUTES)
    fake_graph.fail_next(1, "rate_limit", code=80004, headers={BUSINESS_USAGE_HEADER: usage})
    now = utcnow()

    stats = Dispatcher(services, batch_size=2, concurrency=1).run_once()

    # One request of the throttled account (its other batches wait), all of the other's.
    requests = fake_graph.events_requests()
    assert sent_event_ids(requests[:1]) == mine[:2]
    assert sorted(sent_event_ids(requests[1:])) == theirs
    assert (stats.sent, stats.retried) == (len(theirs), 2)
    throttled = account(services)
    assert throttled.throttled_until == now + timedelta(minutes=REGAIN_MINUTES)
    assert throttled.throttle_reason is not None and "80004" in throttled.throttle_reason
    assert account(services, OTHER).throttled_until is None
    assert_released(services)
    rows = conversions(services, Conversion.waba_id == WABA_ID)
    assert {r.status for r in rows} == {Conversion.PENDING}
    assert [r.attempts for r in rows] == [1, 1, 0, 0, 0, 0]
    assert all(r.next_attempt_at >= throttled.throttled_until for r in rows[:2])

    # Due or not, nothing of the account goes before the estimate has passed.
    freezer.move_to(now + timedelta(minutes=REGAIN_MINUTES) - timedelta(seconds=1))
    assert Dispatcher(services).run_once().requests == 0

    freezer.move_to(now + timedelta(minutes=REGAIN_MINUTES))
    assert Dispatcher(services).run_once().sent == len(mine)
    assert status_counts(services) == {Conversion.SENT: len(mine) + len(theirs)}


def test_without_an_estimate_the_account_waits_for_the_retry_backoff(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    services: Services = make_app(retry_base_seconds=10).extensions["waconv"]
    setup_account(services)
    enqueue_many(services, 4)
    fake_graph.fail_next(1, "rate_limit", code=613)
    now = utcnow()

    Dispatcher(services, batch_size=2).run_once()

    until = account(services).throttled_until
    assert until is not None and now + timedelta(seconds=8) <= until <= now + timedelta(seconds=12)
    assert len(fake_graph.events_requests()) == 1
    freezer.move_to(max(c.next_attempt_at for c in conversions(services)))
    assert Dispatcher(services).run_once().sent == 4


def test_an_app_limit_holds_every_account(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    mine, theirs = two_accounts(services, events=2)
    fake_graph.fail_next(1, "rate_limit", code=4)

    Dispatcher(services, concurrency=1).run_once()

    # Code 4 is the app's limit: the other account does not send either.
    assert sent_event_ids(fake_graph.events_requests()) == mine
    until = account(services).throttled_until
    assert until is not None
    assert account(services, OTHER).throttled_until == until
    assert "the app's" in (account(services, OTHER).throttle_reason or "")

    freezer.move_to(until)
    assert Dispatcher(services).run_once().sent == len(mine) + len(theirs)


def test_usage_headers_at_the_limit_on_an_accepted_batch_stop_the_turn(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    mine, _ = two_accounts(services, events=4)
    fake_graph.usage_headers[APP_USAGE_HEADER] = json.dumps(
        {"call_count": 100, "total_time": 12, "total_cputime": 9}
    )

    stats = Dispatcher(services, batch_size=2, concurrency=1).run_once()

    # The accepted batch is recorded sent; nothing more goes out, of any account.
    assert stats.sent == 2 and sent_event_ids(fake_graph.events_requests()) == mine[:2]
    until = account(services).throttled_until
    assert until is not None and until > utcnow()
    assert account(services, OTHER).throttled_until == until
    assert_released(services)

    fake_graph.usage_headers.clear()
    freezer.move_to(until)
    assert Dispatcher(services).run_once().sent == 6


def test_usage_below_the_limit_changes_nothing(services: Services, fake_graph: FakeGraph) -> None:
    setup_account(services)
    enqueue_many(services, 4)
    fake_graph.usage_headers[BUSINESS_USAGE_HEADER] = business_usage_header(WABA_ID, percent=80)
    fake_graph.usage_headers[APP_USAGE_HEADER] = json.dumps({"call_count": 99})

    assert Dispatcher(services, batch_size=2).run_once().sent == 4
    assert account(services).throttled_until is None


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-batch", "pipelined"])
def test_the_throttled_accounts_queued_batch_stays_pending_untouched(
    services: Services, fake_graph: FakeGraph, pipelined: bool
) -> None:
    setup_account(services)
    enqueue_many(services, 6 if pipelined else 2)
    fake_graph.fail_next(1, "rate_limit", code=17)

    Dispatcher(services, batch_size=2).run_once()

    rows = conversions(services)
    assert {r.status for r in rows} == {Conversion.PENDING}
    assert [r.last_error is None for r in rows] == [False, False] + [True] * (len(rows) - 2)
    assert len(fake_graph.events_requests()) == 1


def test_an_empty_run_says_until_when_an_account_is_throttled(
    waconv: Callable[..., Result],  # noqa: F811
    ready: Services,
    fake_graph: FakeGraph,
) -> None:
    enqueue_many(ready, 2)
    usage = business_usage_header(WABA_ID, percent=100, regain_minutes=REGAIN_MINUTES)
    fake_graph.fail_next(1, "rate_limit", code=80004, headers={BUSINESS_USAGE_HEADER: usage})
    waconv("dispatch", "--once")
    until = account(ready).throttled_until
    assert until is not None

    result = waconv("dispatch", "--once")

    assert result.exit_code == 0, result.output
    assert f"account {WABA_ID}: throttled until {isoformat(until)}, 2 events waiting" in (
        result.stdout
    )
    assert "80004" in result.stdout


def test_the_accounts_list_shows_a_throttle_while_it_lasts(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    setup_account(services)
    enqueue_many(services, 1)
    usage = business_usage_header(WABA_ID, percent=100, regain_minutes=REGAIN_MINUTES)
    fake_graph.fail_next(1, "rate_limit", code=80004, headers={BUSINESS_USAGE_HEADER: usage})
    Dispatcher(services).run_once()
    until = utcnow() + timedelta(minutes=REGAIN_MINUTES)

    [view] = list_accounts(services)
    assert view.to_json()["throttled_until"] == isoformat(until)
    assert "80004" in (view.throttle_reason or "")

    freezer.move_to(until)
    [view] = list_accounts(services)
    assert (view.throttled_until, view.throttle_reason) == (None, None)
