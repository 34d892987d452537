"""Destinations: an account sends to the Graph API, a Conversions API Gateway, or both; each
destination gets each event once, a failure at one never resends to the other, the Gateway's
4xx fails its batch as it is, and its key never shows in a URL or a log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from freezegun.api import FrozenDateTimeFactory

from tests.conftest import ADMIN_TOKEN, DATASET_ID, WABA_ID
from tests.dispatch.helpers import enqueue_many, one, setup_account
from waconv.accounts.service import update_account
from waconv.clock import utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.gateway.fake import FakeGateway
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

KEY = "gw-Key-0123456789-very-distinctive"


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    with FakeGateway(access_key=KEY) as fake:
        yield fake


@pytest.fixture
def routed(
    make_app: Callable[..., Flask], fake_gateway: FakeGateway
) -> Callable[..., tuple[Flask, Services]]:
    """An app whose accounts default to ``destination``, with the test account set up."""

    def build(destination: str, **overrides: Any) -> tuple[Flask, Services]:
        app = make_app(
            destination=destination,
            gateway_url=fake_gateway.url,
            gateway_access_key=KEY,
            **overrides,
        )
        services: Services = app.extensions["waconv"]
        setup_account(services)
        return app, services

    return build


def admin_view(app: Flask, conversion_id: int) -> dict[str, Any]:
    answer = app.test_client().get(
        f"/admin/conversions/{conversion_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def test_gateway_only_posts_access_key_and_events_to_the_gateway_alone(
    routed, fake_graph: FakeGraph, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app, services = routed("gateway")
    ids = enqueue_many(services, 3)

    stats = Dispatcher(services).run_once()

    assert stats.sent == 3
    assert fake_graph.events_requests() == []
    [request] = fake_gateway.requests
    assert request["path"] == f"/capi/{DATASET_ID}/events"
    assert KEY not in request["path"]
    assert request["json"]["accessKey"] == KEY
    data = request["json"]["data"]
    assert [e["event_id"] for e in data] == ids
    assert data[0]["action_source"] == "business_messaging"
    assert data[0]["user_data"]["whatsapp_business_account_id"]
    view = admin_view(app, one(services, ids[0]).id)
    assert view["status"] == "sent"
    assert view["destinations"] == {
        "gateway": {"status": "sent", "attempts": 1, "last_error": None}
    }


def test_both_delivers_each_event_once_to_each(
    routed, fake_graph: FakeGraph, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app, services = routed("both")
    ids = enqueue_many(services, 4)

    assert Dispatcher(services).run_once().sent == 8
    assert Dispatcher(services).run_once().requests == 0  # nothing left

    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    assert fake_gateway.accepted_event_ids() == {eid: 1 for eid in ids}
    row = one(services, ids[0])
    assert (row.status, row.dataset_id) == (Conversion.SENT, DATASET_ID)
    view = admin_view(app, row.id)
    assert view["status"] == "sent"
    assert set(view["destinations"]) == {"graph", "gateway"}


def test_a_gateway_4xx_fails_the_batch_there_unsplit_and_graph_is_not_resent(
    routed, fake_graph: FakeGraph, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app, services = routed("both")
    ids = enqueue_many(services, 3)
    fake_gateway.fail_next(1, status=400, body='{"error": "dataset not configured"}')

    stats = Dispatcher(services).run_once()

    assert fake_gateway.request_count() == 1  # not split, not retried
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}
    freezer.tick(timedelta(hours=1))
    assert Dispatcher(services).run_once().requests == 0
    assert fake_gateway.request_count() == 1
    assert len(fake_graph.events_requests()) == 1
    assert stats.failed == 3
    row = one(services, ids[0])
    assert row.status == Conversion.FAILED
    view = admin_view(app, row.id)
    assert view["status"] == "failed"
    assert view["destinations"]["graph"]["status"] == "sent"
    gateway = view["destinations"]["gateway"]
    assert gateway["status"] == "failed"
    assert "dataset not configured" in gateway["last_error"]
    # Both requests are in the request log, the Gateway's with its words.
    logged = app.test_client().get(
        "/admin/requests", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    items = logged.get_json()["items"]
    assert sorted((i["destination"], i["http_status"], i["events"]) for i in items) == [
        ("gateway", 400, 3),
        ("graph", 200, 3),
    ]
    [refused] = [i for i in items if i["destination"] == "gateway"]
    assert "dataset not configured" in refused["error_message"]
    assert refused["bytes"] > 0


@pytest.mark.parametrize("fault", [429, 503, None], ids=["429", "503", "network"])
def test_gateway_429_5xx_and_network_failures_are_retried_with_backoff(
    routed,
    fake_graph: FakeGraph,
    fake_gateway: FakeGateway,
    freezer: FrozenDateTimeFactory,
    fault: int | None,
) -> None:
    app, services = routed("both")
    ids = enqueue_many(services, 2)
    fake_gateway.fail_next(1, status=fault)

    stats = Dispatcher(services).run_once()

    assert stats.retried == 2
    row = one(services, ids[0])
    assert row.status == Conversion.PENDING
    assert row.next_attempt_at > utcnow()
    assert admin_view(app, row.id)["destinations"]["graph"]["status"] == "sent"
    assert Dispatcher(services).run_once().requests == 0  # backing off
    freezer.tick(timedelta(minutes=1))
    assert Dispatcher(services).run_once().sent == 2
    assert fake_gateway.accepted_event_ids() == {eid: 1 for eid in ids}
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in ids}  # never resent
    assert one(services, ids[0]).status == Conversion.SENT


def test_the_event_filter_sends_listed_events_to_the_gateway_and_the_rest_to_graph(
    routed, fake_graph: FakeGraph, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    _, services = routed("gateway", gateway_events="Purchase")
    purchases = enqueue_many(services, 2, prefix="buy")
    leads = enqueue_many(services, 2, prefix="lead", event_name="LeadSubmitted", custom_data=None)

    Dispatcher(services).run_once()

    assert fake_gateway.accepted_event_ids() == {eid: 1 for eid in purchases}
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in leads}
    assert {one(services, e).status for e in purchases + leads} == {Conversion.SENT}


def test_an_account_without_a_gateway_url_holds_its_events_naming_the_command(
    make_app: Callable[..., Flask], fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app = make_app(destination="gateway")
    services: Services = app.extensions["waconv"]
    setup_account(services)
    [eid] = enqueue_many(services, 1)

    stats = Dispatcher(services).run_once()

    assert (stats.held, fake_gateway.request_count()) == (1, 0)
    error = one(services, eid).last_error or ""
    assert error.startswith("held:") and "waconv accounts set" in error


def test_the_gateway_key_never_reaches_a_log_or_an_error(
    routed,
    fake_gateway: FakeGateway,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, services = routed("gateway")
    [eid] = enqueue_many(services, 1)
    fake_gateway.fail_next(1, status=403, body=f'{{"error": "key {KEY} is not allowed"}}')

    with caplog.at_level(logging.DEBUG):
        Dispatcher(services).run_once()

    row = one(services, eid)
    assert row.status == Conversion.FAILED
    assert KEY not in (row.last_error or "")
    assert "[redacted]" in (row.last_error or "")
    assert KEY not in caplog.text
    assert KEY not in str(admin_view(app, row.id))


def test_a_retried_conversion_goes_again_only_to_the_destination_that_failed(
    routed, fake_graph: FakeGraph, fake_gateway: FakeGateway, freezer: FrozenDateTimeFactory
) -> None:
    app, services = routed("both")
    [eid] = enqueue_many(services, 1)
    fake_gateway.fail_next(1, status=400)
    Dispatcher(services).run_once()
    row = one(services, eid)
    assert row.status == Conversion.FAILED

    answer = app.test_client().post(
        f"/admin/conversions/{row.id}/retry", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert answer.status_code == 202
    Dispatcher(services).run_once()

    assert fake_gateway.accepted_event_ids() == {eid: 1}
    assert fake_graph.accepted_event_ids() == {eid: 1}
    assert one(services, eid).status == Conversion.SENT


@pytest.mark.parametrize(
    ("destination", "gateway_events", "expected"),
    [
        ("gateway", None, {"gateway"}),
        ("both", None, {"graph", "gateway"}),
        ("both", "LeadSubmitted", {"graph"}),  # Purchase is not for the Gateway
        ("gateway", "LeadSubmitted", {"graph"}),  # the filter sends it to Graph instead
    ],
)
def test_a_conversion_not_dispatched_yet_shows_every_destination_it_will_go_to(
    routed, destination: str, gateway_events: str | None, expected: set[str]
) -> None:
    app, services = routed(destination, gateway_events=gateway_events or "")
    [eid] = enqueue_many(services, 1)
    pending = {"status": "pending", "attempts": 0, "last_error": None}

    view = admin_view(app, one(services, eid).id)
    listed = app.test_client().get(
        "/admin/conversions?status=pending", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

    assert view["destinations"] == {name: pending for name in expected}
    [item] = listed.get_json()["items"]
    assert item["destinations"] == view["destinations"]


def test_an_accounts_own_destination_decides_what_a_pending_conversion_shows(
    routed, fake_graph: FakeGraph
) -> None:
    app, services = routed("graph")
    update_account(services, WABA_ID, destination="both")
    [eid] = enqueue_many(services, 1)

    assert set(admin_view(app, one(services, eid).id)["destinations"]) == {"graph", "gateway"}
