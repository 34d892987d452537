"""A request body is capped in bytes as well as in events; an answer that says the body was
too large (413) splits the batch and never pauses the account."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from freezegun.api import FrozenDateTimeFactory

from tests.conftest import WABA_ID
from tests.dispatch.helpers import account, enqueue_many, setup_account, status_counts
from waconv.conversions.dispatcher import Dispatcher
from waconv.gateway.fake import FakeGateway
from waconv.graph.fake import FakeGraph
from waconv.models import Account, Conversion
from waconv.services import Services

KEY = "size-test-gateway-key"


def test_a_batch_over_the_byte_cap_goes_out_in_smaller_requests(
    ready: Services, fake_graph: FakeGraph, freezer: FrozenDateTimeFactory
) -> None:
    ids = enqueue_many(ready, 10)
    dispatcher = Dispatcher(ready)
    dispatcher.graph.max_bytes = 2000  # about four events

    stats = dispatcher.run_once()

    assert stats.sent == 10
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    bodies = [len(r["json"]["data"]) for r in fake_graph.events_requests()]
    assert len(bodies) > 1 and max(bodies) < 10
    assert account(ready).status == Account.ACTIVE


def test_a_413_splits_the_batch_and_never_pauses_the_account(
    ready: Services, fake_graph: FakeGraph, freezer: FrozenDateTimeFactory
) -> None:
    ids = enqueue_many(ready, 4)
    fake_graph.fail_next(1, "http500", status=413)

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed) == (4, 0)
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    assert account(ready).status == Account.ACTIVE


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    with FakeGateway(access_key=KEY) as fake:
        yield fake


def test_a_gateway_413_splits_instead_of_failing(
    make_app, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app = make_app(destination="gateway", gateway_url=fake_gateway.url, gateway_access_key=KEY)
    services: Services = app.extensions["waconv"]
    setup_account(services)
    ids = enqueue_many(services, 4)
    fake_gateway.fail_next(1, status=413, body="Request Entity Too Large")

    Dispatcher(services).run_once()

    assert fake_gateway.accepted_event_ids() == {eid: 1 for eid in ids}
    assert status_counts(services) == {Conversion.SENT: 4}


def test_a_backlog_of_large_events_is_read_a_request_at_a_time(
    ready: Services, fake_graph: FakeGraph
) -> None:
    """A claim stops at a request's byte cap, so a dispatcher never holds a thousand large
    events at once (bench/fleet.py measures the memory); every event still goes, once."""
    from waconv.clock import utcnow
    from waconv.conversions import queue
    from waconv.conversions.schedule import send_limit

    big = {"value": 1, "currency": "USD", "note": "x" * 400_000}
    ids = enqueue_many(ready, 20, custom_data=big)  # 8 MB: three requests' worth
    now = utcnow()
    first = queue.claim(ready.db, WABA_ID, 1000, now=now, oldest=send_limit(now))
    # Each event is ~400,450 bytes with its overhead: the events whose predecessors take less
    # than the 3 MiB cap are the first 8 (SQLite stops reading there, PostgreSQL's window
    # query cuts there: both by the same rule).
    size = len(json.dumps(big)) + queue.EVENT_OVERHEAD_BYTES
    expected = -(-queue.MAX_REQUEST_BYTES // size)  # k rows while (k - 1) * size < the cap
    assert expected == 8
    assert len(first.rows) == expected and first.more

    stats = Dispatcher(ready).run_once()

    assert stats.sent == 20
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    assert len(fake_graph.events_requests()) >= 3
    assert status_counts(ready) == {Conversion.SENT: 20}
