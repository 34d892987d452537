"""/metrics after a dispatcher run: events by status and outcome, queue depth, oldest age."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from freezegun.api import FrozenDateTimeFactory
from prometheus_client import REGISTRY

from tests.dispatch.helpers import clid, enqueue_many
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.services import Services


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("waconv_conversion_events_total", {"outcome": outcome})
    return value or 0.0


def test_metrics_after_a_run(
    freezer: FrozenDateTimeFactory,
    ready: Services,
    fake_graph: FakeGraph,
    client: FlaskClient,
) -> None:
    before = {outcome: counter(outcome) for outcome in ("sent", "failed")}
    enqueue_many(ready, 4)
    fake_graph.invalid_clids.add(clid("evt", 3))
    Dispatcher(ready).run_once()
    enqueue_many(ready, 2, prefix="later")  # pending, enqueued now
    freezer.tick(timedelta(seconds=90))
    enqueue_many(ready, 1, prefix="latest")

    response = client.get("/metrics")

    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert sample(text, 'waconv_conversions{status="sent"}') == 3
    assert sample(text, 'waconv_conversions{status="failed"}') == 1
    assert sample(text, 'waconv_conversions{status="pending"}') == 3
    assert sample(text, 'waconv_conversions{status="expired"}') == 0
    assert sample(text, "waconv_outbox_queue_depth") == 3
    assert sample(text, "waconv_outbox_oldest_pending_age_seconds") == 90
    assert sample(text, 'waconv_conversion_events_total{outcome="sent"}') == before["sent"] + 3
    assert sample(text, 'waconv_conversion_events_total{outcome="failed"}') == before["failed"] + 1
    assert 'waconv_graph_requests_total{endpoint="events",outcome="ok"}' in text
    assert 'waconv_graph_requests_total{endpoint="events",outcome="invalid"}' in text


def test_empty_outbox_metrics(ready: Services, client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "waconv_outbox_queue_depth") == 0
    assert sample(text, "waconv_outbox_oldest_pending_age_seconds") == 0
