"""Events leave the outbox in batches of at most 1,000, each once, in Meta's exact shape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from flask import Flask
from freezegun.api import FrozenDateTimeFactory

from tests.conftest import ACCESS_TOKEN, DATASET_ID, WABA_ID
from tests.dispatch.helpers import (
    PURCHASE,
    assert_released,
    by_event_id,
    enqueue_many,
    enqueue_one,
    setup_account,
    status_counts,
)
from waconv.clock import to_unix, utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services


def test_2500_events_leave_in_batches_of_at_most_1000_each_exactly_once(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 2500)
    freezer.tick(timedelta(seconds=3))
    sent_at = utcnow()

    stats = Dispatcher(ready).run_once()

    assert fake_graph.batch_sizes() == [1000, 1000, 500]
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids)
    assert set(accepted.values()) == {1}
    assert (stats.sent, stats.requests, stats.retried, stats.failed) == (2500, 3, 0, 0)
    rows = by_event_id(ready)
    assert status_counts(ready) == {Conversion.SENT: 2500}
    for row in rows.values():
        assert row.sent_at == sent_at
        assert row.dataset_id == DATASET_ID
        assert row.attempts == 1
        assert row.last_error is None
    assert_released(ready)
    # Nothing left: a second run sends nothing.
    assert Dispatcher(ready).run_once().requests == 0
    assert len(fake_graph.events_requests()) == 3


def test_meta_receives_exactly_the_contract_shape(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    event_time = utcnow() - timedelta(hours=1, seconds=17)
    eid = "contract-shape"
    enqueue_one(ready, eid, event_time=event_time, ctwa_clid="ARclid-shape")

    Dispatcher(ready).run_once()

    [request] = fake_graph.events_requests()
    assert request["path"] == f"/v26.0/{DATASET_ID}/events"
    assert request["headers"]["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request["query"] == {}  # the token never travels in the URL
    assert request["json"] == {
        "data": [
            {
                "event_name": "Purchase",
                "event_time": to_unix(event_time),
                "event_id": eid,
                "action_source": "business_messaging",
                "messaging_channel": "whatsapp",
                "user_data": {
                    "whatsapp_business_account_id": WABA_ID,
                    "ctwa_clid": "ARclid-shape",
                },
                "custom_data": PURCHASE,
            }
        ]
    }
    assert isinstance(request["json"]["data"][0]["event_time"], int)


def test_partner_agent_test_event_code_and_ldu_when_configured(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(
        partner_agent="waconv-partner",
        test_event_code="TEST12345",
        ldu=True,
        ldu_country=1,
        ldu_state=1000,
    )
    services: Services = app.extensions["waconv"]
    setup_account(services)
    enqueue_many(services, 2, event_name="LeadSubmitted", custom_data=None)

    Dispatcher(services).run_once()

    [request] = fake_graph.events_requests()
    body = request["json"]
    assert body["partner_agent"] == "waconv-partner"
    assert body["test_event_code"] == "TEST12345"
    for event in body["data"]:
        assert event["data_processing_options"] == ["LDU"]
        assert event["data_processing_options_country"] == 1
        assert event["data_processing_options_state"] == 1000
        assert "custom_data" not in event  # none given, none sent
    assert status_counts(services) == {Conversion.SENT: 2}


def test_no_partner_agent_test_event_code_or_ldu_by_default(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 1)

    Dispatcher(ready).run_once()

    [request] = fake_graph.events_requests()
    assert set(request["json"]) == {"data"}
    [event] = request["json"]["data"]
    assert not any(key.startswith("data_processing_options") for key in event)


def test_dataset_from_the_environment_for_the_default_waba(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(waba_id=WABA_ID, dataset_id=DATASET_ID)
    services: Services = app.extensions["waconv"]
    enqueue_many(services, 3)

    Dispatcher(services).run_once()

    assert fake_graph.batch_sizes() == [3]
    assert {r.dataset_id for r in by_event_id(services).values()} == {DATASET_ID}


def test_extra_fields_reach_meta(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    extra = {"messaging_outcome_data": {"outcome_type": "automatic_events"}}
    enqueue_many(ready, 1, extra=extra)

    Dispatcher(ready).run_once()

    [event] = fake_graph.events_requests()[0]["json"]["data"]
    assert event["messaging_outcome_data"] == {"outcome_type": "automatic_events"}


def test_an_event_that_cannot_be_built_fails_alone(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """A poison row (extra overriding a key Meta's event owns) must not block its account."""
    good = enqueue_many(ready, 3)
    [bad] = enqueue_many(ready, 1, prefix="bad", extra={"event_time": 1})

    Dispatcher(ready).run_once()

    rows = by_event_id(ready)
    assert rows[bad].status == Conversion.FAILED
    assert rows[bad].last_error is not None and "event_time" in rows[bad].last_error
    assert {rows[e].status for e in good} == {Conversion.SENT}
    assert set(fake_graph.accepted_event_ids()) == set(good)


def test_batch_size_is_respected(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 25)

    Dispatcher(ready, batch_size=10).run_once()

    assert fake_graph.batch_sizes() == [10, 10, 5]
    assert status_counts(ready) == {Conversion.SENT: 25}


def test_several_accounts_each_to_its_own_dataset(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    other_waba, other_dataset = "200000000000001", "300000000000001"
    setup_account(ready, other_waba, other_dataset)
    enqueue_many(ready, 3)
    enqueue_many(ready, 2, prefix="other", waba_id=other_waba)

    Dispatcher(ready).run_once()

    by_path = {r["path"]: r["json"]["data"] for r in fake_graph.events_requests()}
    assert {p: len(d) for p, d in by_path.items()} == {
        f"/v26.0/{DATASET_ID}/events": 3,
        f"/v26.0/{other_dataset}/events": 2,
    }
    other_events = by_path[f"/v26.0/{other_dataset}/events"]
    assert {e["user_data"]["whatsapp_business_account_id"] for e in other_events} == {other_waba}
    assert status_counts(ready) == {Conversion.SENT: 5}
