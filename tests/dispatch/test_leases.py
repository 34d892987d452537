"""Leases: a dispatcher holds an account while it sends its events; one that dies mid-flight
loses the account, and so its events, to another after 60 seconds, with the same event_ids;
what it does late changes nothing; two dispatchers never send an event twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from prometheus_client import REGISTRY

from tests.conftest import WABA_ID
from tests.dispatch.helpers import (
    account,
    assert_released,
    clid,
    conversions,
    enqueue_many,
    sent_event_ids,
    status_counts,
)
from waconv.accounts import registry
from waconv.clock import utcnow
from waconv.conversions.destinations import GRAPH, Refusal
from waconv.conversions.dispatcher import LEASE, Claimed, Dispatcher, DispatchStats
from waconv.conversions.requestlog import RequestRecord
from waconv.graph.client import GraphClient
from waconv.graph.errors import Disposition
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

WAIT_SECONDS = 10.0  # bound on every wait for another thread
STUCK_SECONDS = 2.0  # how long the fake keeps the stuck dispatcher's request


def sent_counter() -> float:
    value = REGISTRY.get_sample_value("waconv_conversion_events_total", {"outcome": "sent"})
    return value or 0.0


def claim(services: Services, dispatcher: Dispatcher, limit: int = 1000) -> Claimed:
    """What a dispatcher does before its first request: take the account, read a batch."""
    with services.db.transaction() as session:
        lease = dispatcher._take_lease(session, WABA_ID)
    assert lease is not None
    return dispatcher._claim(lease, limit)


def credentials(services: Services) -> registry.Credentials:
    with services.db.transaction() as session:
        account = registry.get_account(session, WABA_ID)
        assert account is not None
        return registry.credentials(account, services.settings)


@pytest.fixture
def client(fake_graph: FakeGraph) -> Iterator[GraphClient]:
    with GraphClient(fake_graph.url, "v26.0", timeout=5) as graph:
        yield graph


def test_claimed_events_of_a_dead_dispatcher_go_again_after_the_lease(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 5)
    dead = Dispatcher(ready)
    claimed = claim(ready, dead)  # ... and then the process was killed

    assert {r.status for r in conversions(ready)} == {Conversion.PENDING}  # only read
    assert account(ready).dispatch_token == claimed.lease.token
    freezer.tick(LEASE - timedelta(seconds=1))
    assert Dispatcher(ready).run_once().requests == 0  # still leased: nobody touches them
    freezer.tick(timedelta(seconds=2))  # 61 s after the claim

    stats = Dispatcher(ready).run_once()

    assert stats.sent == 5
    assert sent_event_ids(fake_graph.events_requests()) == ids
    after = {r.event_id: r for r in conversions(ready)}
    for row in after.values():
        assert (row.status, row.attempts) == (Conversion.SENT, 1)
    assert_released(ready)

    # The dead dispatcher comes back and finishes its work late: nothing changes.
    counted = sent_counter()
    creds = credentials(ready)
    err = Refusal(GRAPH, Disposition.RETRY, "late")
    late_request = RequestRecord(
        at=utcnow(), waba_id=WABA_ID, destination=GRAPH, events=5, bytes=1, duration_ms=1
    )
    assert dead._record_sent(claimed.rows, creds, late_request) == 0
    assert dead._record_failed(claimed, claimed.rows, err) == 0
    assert dead._record_retry(claimed, claimed.rows, err) == (0, 0)
    late = DispatchStats()
    token = Refusal(GRAPH, Disposition.ACCOUNT, "late", code=190, code_label="190")
    dead._record_account_problem(claimed, token, creds, late)
    assert late.held == 0
    # Nor does it send them again: its lease is gone.
    assert dead._deliver(creds, claimed, claimed.rows, late)
    assert len(fake_graph.events_requests()) == 1
    assert sent_counter() == counted
    for row in conversions(ready):
        before = after[row.event_id]
        assert (row.status, row.attempts, row.sent_at, row.last_error) == (
            before.status,
            before.attempts,
            before.sent_at,
            before.last_error,
        )
    assert set(fake_graph.accepted_event_ids().values()) == {1}


def test_a_dispatcher_stuck_in_a_request_loses_its_events_to_another(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph, client: GraphClient
) -> None:
    ids = enqueue_many(ready, 5)
    # The first request hangs, then drops: long enough for the takeover below, even on a
    # busy machine.
    fake_graph.fail_next(1, "timeout", delay=STUCK_SECONDS)
    stuck = Dispatcher(ready, graph=client)
    results: list[DispatchStats] = []
    thread = threading.Thread(target=lambda: results.append(stuck.run_once()))
    thread.start()
    for _ in range(int(WAIT_SECONDS / 0.01)):  # until the stuck request has arrived
        if fake_graph.events_requests():
            break
        threading.Event().wait(0.01)
    assert len(fake_graph.events_requests()) == 1

    freezer.tick(LEASE + timedelta(seconds=1))
    stats = Dispatcher(ready).run_once()
    thread.join(WAIT_SECONDS)

    assert not thread.is_alive()
    assert stats.sent == 5
    [first, second] = fake_graph.events_requests()
    assert sent_event_ids([first]) == sent_event_ids([second]) == ids
    # The stuck dispatcher's failure came after the takeover: it changed and counted nothing.
    assert results[0].retried == 0
    for row in conversions(ready):
        assert (row.status, row.attempts, row.last_error) == (Conversion.SENT, 1, None)
    assert set(fake_graph.accepted_event_ids().values()) == {1}


class TakenOverMidSplit(GraphClient):
    """The first request is slow: meanwhile the lease runs out and another dispatcher takes the
    account over and sends its events."""

    def __init__(self, fake: FakeGraph, freezer: FrozenDateTimeFactory, other: Dispatcher) -> None:
        super().__init__(fake.url, "v26.0", timeout=5)
        self.freezer, self.other = freezer, other
        self.calls = 0

    def send_events(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        try:
            return super().send_events(*args, **kwargs)
        finally:
            if self.calls == 1:
                self.freezer.tick(LEASE + timedelta(seconds=1))
                self.other.run_once()


def test_a_dispatcher_that_lost_its_lease_mid_split_sends_nothing_more(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 8)
    fake_graph.invalid_clids.add(clid("evt", 5))
    graph = TakenOverMidSplit(fake_graph, freezer, Dispatcher(ready))

    stats = Dispatcher(ready, graph=graph).run_once()
    graph.close()

    assert graph.calls == 1  # after its rejected batch it found the events gone
    assert stats.sent == stats.failed == 0
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids) - {ids[5]}
    assert set(accepted.values()) == {1}  # Meta does not deduplicate: once means once
    assert status_counts(ready) == {Conversion.SENT: 7, Conversion.FAILED: 1}


def test_the_lease_is_extended_during_a_long_split(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """Meta takes 20 s a request and a split takes many: the lease keeps ahead of the requests,
    so no other dispatcher can take the events while they are being worked on."""
    enqueue_many(ready, 16)
    fake_graph.invalid_clids.add(clid("evt", 9))
    other = Dispatcher(ready)

    class Slow(GraphClient):
        def send_events(self, *args: Any, **kwargs: Any) -> Any:
            until = account(ready).dispatch_leased_until
            assert until is not None and until > utcnow() + timedelta(seconds=5)
            assert other.run_once().requests == 0  # nothing for another dispatcher
            try:
                return super().send_events(*args, **kwargs)
            finally:
                freezer.tick(timedelta(seconds=20))

    with Slow(fake_graph.url, "v26.0", timeout=5) as graph:
        stats = Dispatcher(ready, graph=graph).run_once()

    assert (stats.sent, stats.failed) == (15, 1)
    assert stats.requests >= 8  # 16 -> 8 -> 4 -> 2 -> 1 with their siblings: over 60 s
    assert set(fake_graph.accepted_event_ids().values()) == {1}


@pytest.mark.parametrize("batch_size", [1000, 250])
def test_two_dispatchers_at_once_deliver_every_event_exactly_once(
    ready: Services, fake_graph: FakeGraph, batch_size: int
) -> None:
    ids = enqueue_many(ready, 3000)
    start = threading.Barrier(2)
    results: list[DispatchStats] = []
    errors: list[BaseException] = []

    def run() -> None:
        with GraphClient(fake_graph.url, "v26.0", timeout=10) as graph:
            dispatcher = Dispatcher(ready, graph=graph, batch_size=batch_size)
            start.wait(WAIT_SECONDS)
            try:
                results.append(dispatcher.run_once())
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert not any(t.is_alive() for t in threads)
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids)
    assert set(accepted.values()) == {1}
    assert sum(fake_graph.batch_sizes()) == 3000  # no event was even offered twice
    assert sum(r.sent for r in results) == 3000
    assert status_counts(ready) == {Conversion.SENT: 3000}
    assert {r.attempts for r in conversions(ready)} == {1}


def test_the_lease_length_is_configurable(make_app):
    services = make_app(lease_seconds=10).extensions["waconv"]
    assert Dispatcher(services).lease.total_seconds() == 10
