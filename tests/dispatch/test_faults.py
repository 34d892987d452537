"""Every retryable fault: the events wait with backoff and go again with the same event_ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from freezegun.api import FrozenDateTimeFactory

from tests.dispatch.helpers import (
    assert_released,
    conversions,
    enqueue_many,
    sent_event_ids,
    setup_account,
)
from waconv.clock import utcnow
from waconv.conversions.dispatcher import MAX_BACKOFF, Dispatcher, backoff
from waconv.graph.client import GraphClient
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

BASE = 10.0  # WACONV_RETRY_BASE_SECONDS of these tests
CLIENT_TIMEOUT = 0.3  # seconds; the fake's "timeout" fault keeps silent for 1 s

# kind, fake options, Meta's code the events record (None: no Graph error envelope)
FAULTS: list[tuple[str, dict[str, Any], int | None]] = [
    ("http500", {}, None),
    ("http500", {"status": 502}, None),
    ("http503_json", {}, 2),
    ("rate_limit", {"code": 4}, 4),
    ("rate_limit", {"code": 17}, 17),
    ("rate_limit", {"code": 613}, 613),
    ("rate_limit", {"code": 80004}, 80004),
    ("rate_limit", {"code": 4, "status": 429}, 4),
    ("error", {"status": 429, "code": 0}, 0),
    ("transient", {}, 1),
    ("transient", {"code": 100}, 100),  # is_transient wins over an "invalid parameter" code
    ("timeout", {}, None),
    ("reset", {}, None),
    ("received_zero", {}, None),
]


@pytest.fixture
def services(make_app: Callable[..., Flask]) -> Services:
    app = make_app(retry_base_seconds=BASE)
    services: Services = app.extensions["waconv"]
    setup_account(services)
    return services


@pytest.fixture
def impatient(fake_graph: FakeGraph) -> Iterator[GraphClient]:
    """A client that gives up after 0.3 s (only where a timeout is the point: on a busy
    machine an ordinary answer may take that long)."""
    with GraphClient(fake_graph.url, "v26.0", timeout=CLIENT_TIMEOUT) as client:
        yield client


@pytest.mark.parametrize(
    ("kind", "options", "code"),
    FAULTS,
    ids=[f"{k}-{o.get('code', '')}-{o.get('status', '')}" for k, o, _ in FAULTS],
)
def test_fault_backs_off_then_resends_the_same_event_ids(
    freezer: FrozenDateTimeFactory,
    services: Services,
    fake_graph: FakeGraph,
    impatient: GraphClient,
    kind: str,
    options: dict[str, Any],
    code: int | None,
) -> None:
    ids = enqueue_many(services, 3)
    fake_graph.fail_next(1, kind, **options)
    now = utcnow()

    graph = impatient if kind == "timeout" else None
    stats = Dispatcher(services, graph=graph).run_once()

    assert (stats.retried, stats.sent, stats.requests) == (3, 0, 1)
    assert not fake_graph.accepted_event_ids()
    rows = conversions(services)
    for row in rows:
        assert row.status == Conversion.PENDING
        assert row.attempts == 1
        assert now + timedelta(seconds=BASE * 0.8) <= row.next_attempt_at
        assert row.next_attempt_at <= now + timedelta(seconds=BASE * 1.2)
        assert row.last_error is not None
        assert row.last_error.startswith("will retry: cannot send events")
        assert row.last_error_code == code
        assert row.last_error_message
        if code is not None:
            assert row.last_error_fbtrace_id
    assert_released(services)
    # Not due yet: nothing goes.
    assert Dispatcher(services).run_once().requests == 0

    freezer.move_to(max(r.next_attempt_at for r in rows))
    stats = Dispatcher(services).run_once()

    assert (stats.sent, stats.requests) == (3, 1)
    first, second = fake_graph.events_requests()
    assert sent_event_ids([first]) == sent_event_ids([second]) == ids
    assert first["json"] == second["json"]  # the very same payload, event_time included
    assert set(fake_graph.accepted_event_ids().values()) == {1}
    for row in conversions(services):
        assert row.status == Conversion.SENT
        assert row.attempts == 2
        assert row.last_error is None


def test_backoff_doubles_per_attempt_and_caps_at_15_minutes(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(retry_base_seconds=1)
    services: Services = app.extensions["waconv"]
    setup_account(services)
    enqueue_many(services, 1)
    failures = 13  # 1, 2, 4 ... 512 s, then 1024 capped to 900
    fake_graph.fail_next(failures, "http503_json")

    for attempt in range(1, failures + 1):
        now = utcnow()
        Dispatcher(services).run_once()
        [row] = conversions(services)
        assert (row.status, row.attempts) == (Conversion.PENDING, attempt)
        delay = (row.next_attempt_at - now).total_seconds()
        expected = min(2 ** (attempt - 1), MAX_BACKOFF.total_seconds())
        assert expected * 0.8 <= delay <= min(expected * 1.2, MAX_BACKOFF.total_seconds())
        freezer.move_to(row.next_attempt_at)

    Dispatcher(services).run_once()
    [row] = conversions(services)
    assert (row.status, row.attempts) == (Conversion.SENT, failures + 1)
    assert len(fake_graph.events_requests()) == failures + 1
    assert set(fake_graph.accepted_event_ids().values()) == {1}


def test_backoff_function_jitters_within_20_percent() -> None:
    for attempts, base in [(1, 5.0), (2, 5.0), (4, 5.0), (8, 5.0)]:
        expected = base * 2 ** (attempts - 1)
        delays = {backoff(attempts, base).total_seconds() for _ in range(200)}
        assert all(expected * 0.8 <= d <= expected * 1.2 for d in delays)
        assert len(delays) > 100  # jittered, not one value
    cap = MAX_BACKOFF.total_seconds()
    capped = [backoff(20, 5.0).total_seconds() for _ in range(200)]
    assert all(cap * 0.8 <= d <= cap for d in capped)


def test_retry_after_a_fault_mid_way_keeps_the_rest_flowing(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    """A 500 on the second of three batches: the first and third go out in the same run."""
    ids = enqueue_many(services, 25)
    fake_graph.fail_next(1, "http500")  # first request fails ...

    stats = Dispatcher(services, batch_size=10).run_once()

    # ... its 10 events wait; the others are sent in the same run.
    assert (stats.sent, stats.retried) == (15, 10)
    waiting = {r.event_id for r in conversions(services, Conversion.status == Conversion.PENDING)}
    assert waiting == set(sent_event_ids(fake_graph.events_requests()[:1]))  # the failed ten
    freezer.tick(timedelta(seconds=BASE * 1.2))
    assert Dispatcher(services, batch_size=10).run_once().sent == 10
    assert set(fake_graph.accepted_event_ids()) == set(ids)
    assert set(fake_graph.accepted_event_ids().values()) == {1}


def test_backoff_survives_absurd_attempt_counts() -> None:
    assert backoff(5000, 5.0) <= MAX_BACKOFF
    assert backoff(0, 5.0).total_seconds() <= 6.0
