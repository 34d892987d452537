"""The dispatcher's pipeline: an account's batches go out back to back, the next one claimed
while the previous is on the wire, and a failure in one batch touches no other batch's rows."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import WABA_ID
from tests.dispatch.helpers import (
    assert_released,
    clid,
    conversions,
    enqueue_many,
    enqueue_one,
    setup_account,
    status_counts,
)
from waconv.accounts import registry
from waconv.conversions.dispatcher import Dispatcher
from waconv.conversions.queue import Row
from waconv.graph.client import GraphClient
from waconv.graph.fake import FakeGraph
from waconv.models import Account, Conversion
from waconv.services import Services


@pytest.fixture
def ready(services: Services) -> Services:
    setup_account(services)
    return services


class Watched(GraphClient):
    """Counts the events requests and lets a test act just before the ``n``-th one."""

    def __init__(self, fake: FakeGraph, before: dict[int, Any] | None = None) -> None:
        super().__init__(fake.url, "v26.0", timeout=10)
        self.before = before or {}
        self.calls = 0
        self.threads: set[str] = set()

    def send_events(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls in self.before:
            self.before[self.calls]()
        return super().send_events(*args, **kwargs)


def test_batches_go_out_back_to_back_from_the_sender_thread_each_event_once(
    ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 3500)
    with Watched(fake_graph) as graph:
        stats = Dispatcher(ready, graph=graph).run_once()

    assert sorted(fake_graph.batch_sizes()) == [500, 1000, 1000, 1000]
    assert (stats.sent, stats.requests) == (3500, 4)
    assert any(name.startswith("dispatcher-send") for name in graph.threads)
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids) and set(accepted.values()) == {1}
    assert status_counts(ready) == {Conversion.SENT: 3500}
    assert {r.attempts for r in conversions(ready)} == {1}
    assert_released(ready)


def test_a_rejected_batch_mid_pipeline_is_split_and_the_others_still_go_once(
    ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 3000)
    fake_graph.invalid_clids.add(clid("evt", 1500))

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed) == (2999, 1)
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids) - {ids[1500]}
    assert set(accepted.values()) == {1}
    assert status_counts(ready) == {Conversion.SENT: 2999, Conversion.FAILED: 1}
    assert {r.attempts for r in conversions(ready)} == {1}


def test_an_account_paused_mid_pipeline_gives_back_the_batch_it_had_claimed(
    ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 3500)
    # Meta revokes the token just before the second request; the third batch is claimed by
    # then (while the second was on the wire) and must go back to waiting, uncounted.
    with Watched(fake_graph, {2: fake_graph.valid_tokens.clear}) as graph:
        stats = Dispatcher(ready, graph=graph).run_once()

    assert graph.calls == 2
    assert (stats.sent, stats.held) == (1000, 2000)
    assert stats.paused_accounts == [WABA_ID]
    assert sum(fake_graph.accepted_event_ids().values()) == 1000
    assert status_counts(ready) == {Conversion.SENT: 1000, Conversion.PENDING: 2500}
    waiting = conversions(ready, Conversion.status == Conversion.PENDING)
    assert {r.attempts for r in waiting} == {0}
    assert_released(ready)
    with ready.db.transaction() as session:
        account = registry.get_account(session, WABA_ID)
        assert account is not None and account.status == Account.PAUSED


def test_a_deadline_stops_claiming_after_the_batch_in_flight(
    ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 2500)

    stats = Dispatcher(ready).run_once(max_seconds=0)

    assert (stats.sent, stats.requests) == (1000, 1)
    assert status_counts(ready) == {Conversion.SENT: 1000, Conversion.PENDING: 1500}
    waiting = conversions(ready, Conversion.status == Conversion.PENDING)
    assert {r.attempts for r in waiting} == {0}  # never claimed


def test_a_stop_request_ends_the_turn_and_finishes_what_is_in_flight(
    ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 3500)
    stop = threading.Event()
    dispatcher = Dispatcher(ready)
    # SIGTERM arrives while the second batch is on the wire.
    with Watched(fake_graph, {2: stop.set}) as graph:
        dispatcher.graph = graph
        dispatcher.run_forever(stop)

    sent = sum(fake_graph.accepted_event_ids().values())
    assert sent in (2000, 3000)  # the batch on the wire, and one already claimed for it
    counts = status_counts(ready)
    assert counts == {Conversion.SENT: sent, Conversion.PENDING: 3500 - sent}
    assert_released(ready)  # another dispatcher may take the account at once


def test_a_failed_record_does_not_lose_the_batch_on_the_wire(
    ready: Services, fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = enqueue_many(ready, 2500)
    dispatcher = Dispatcher(ready)
    real = dispatcher._record_sent
    calls = 0

    def record_sent(rows: list[Row], creds: Any, record: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return real(rows, creds, record)

    monkeypatch.setattr(dispatcher, "_record_sent", record_sent)

    with pytest.raises(RuntimeError, match="database went away"):
        dispatcher.run_once()

    accepted = fake_graph.accepted_event_ids()
    assert set(accepted.values()) == {1}
    rows = {r.event_id: r for r in conversions(ready)}
    sent = {e for e, r in rows.items() if r.status == Conversion.SENT}
    pending = {e for e, r in rows.items() if r.status == Conversion.PENDING}
    # Only the batch whose record failed stays pending though Meta has it (it goes again,
    # under the same event_ids); any other batch Meta took was recorded, after the failure
    # too: none was sent and forgotten.
    assert len(set(accepted) & pending) == 1000
    assert set(accepted) <= sent | pending
    assert sent <= set(accepted)
    assert sent | pending == set(ids)
    assert_released(ready)


def test_events_enqueued_during_a_turn_are_sent_in_the_same_run(
    ready: Services, fake_graph: FakeGraph
) -> None:
    """Claims within a turn start after the last one's events (they are in flight); an event
    that becomes due meanwhile, a new one or a failed one retried by the operator, is after
    them and still goes."""
    ids = enqueue_many(ready, 2500)
    late: list[str] = []

    def enqueue_now() -> None:
        late.append(enqueue_one(ready, "arrived-mid-turn").event_id)

    with Watched(fake_graph, {2: enqueue_now}) as graph:
        stats = Dispatcher(ready, graph=graph).run_once()

    assert stats.sent == 2501
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids) | set(late) and set(accepted.values()) == {1}
    assert status_counts(ready) == {Conversion.SENT: 2501}
