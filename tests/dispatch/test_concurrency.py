"""Many accounts at once: one dispatcher keeps up to WACONV_DISPATCH_CONCURRENCY requests in
flight, each for a different account under its lease; several dispatchers never send an event
twice."""

from __future__ import annotations

import threading

import pytest

from tests.dispatch.helpers import assert_released, enqueue_many, setup_account, status_counts
from waconv.config import ConfigError, load_settings
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

ACCOUNTS = [f"30000000000000{n}" for n in range(6)]
LATENCY = 0.3  # seconds Meta takes to answer, here


def fleet(services: Services, events: int = 3) -> list[str]:
    ids = []
    for n, waba_id in enumerate(ACCOUNTS):
        setup_account(services, waba_id, f"40000000000000{n}")
        ids += enqueue_many(services, events, prefix=f"acct{n}", waba_id=waba_id)
    return ids


def test_requests_of_different_accounts_are_in_flight_at_once(
    services: Services, fake_graph: FakeGraph
) -> None:
    ids = fleet(services)
    fake_graph.latency = LATENCY

    stats = Dispatcher(services, concurrency=4).run_once()

    assert stats.sent == len(ids)
    assert fake_graph.max_in_flight == 4
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    for waba_id in ACCOUNTS:
        assert_released(services, waba_id)


def test_a_concurrency_of_one_sends_one_request_at_a_time(
    services: Services, fake_graph: FakeGraph
) -> None:
    fleet(services, events=1)
    fake_graph.latency = 0.05

    Dispatcher(services, concurrency=1).run_once()

    assert fake_graph.max_in_flight == 1


def test_several_concurrent_dispatchers_send_each_event_once(
    services: Services, fake_graph: FakeGraph
) -> None:
    ids = fleet(services, events=40)
    fake_graph.latency = 0.05
    dispatchers = [Dispatcher(services, concurrency=3, batch_size=7) for _ in range(3)]
    threads = [threading.Thread(target=d.run_once) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    Dispatcher(services).run_once()  # whatever a busy account left for later

    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    assert status_counts(services) == {Conversion.SENT: len(ids)}


@pytest.mark.parametrize("value", ["0", "65", "many"])
def test_the_concurrency_setting_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="WACONV_DISPATCH_CONCURRENCY"):
        load_settings(environ={"WACONV_DISPATCH_CONCURRENCY": value}, dev_secrets_file=None)
