"""Prometheus metrics.

Counters live in the process that counts (web workers, dispatchers); with
``PROMETHEUS_MULTIPROC_DIR`` set they are summed across every process of the host. Queue state
(depth, oldest pending event, counts by status) is read from the database at scrape time, so any
web worker answers with the truth of the whole deployment.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from waconv.clock import utcnow

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from waconv.services import Services

log = logging.getLogger(__name__)

WEBHOOK_DELIVERIES = Counter(
    "waconv_webhook_deliveries",
    "Webhook POSTs by outcome (stored, duplicate, processing_failed, rejected_*)",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "waconv_webhook_seconds",
    "Time to verify, store and process one webhook delivery",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONVERSION_EVENTS = Counter(
    "waconv_conversion_events",
    "Conversion events leaving the outbox, by outcome (sent, retry, failed, expired, held)",
    ["outcome"],
)
GRAPH_REQUESTS = Counter(
    "waconv_graph_requests",
    "Graph API requests by endpoint and outcome",
    ["endpoint", "outcome"],
)


class OutboxCollector(Collector):
    """Gauges read from the database when /metrics is scraped."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except SQLAlchemyError as exc:
            # /metrics must answer while the database is down: that is when it matters most.
            log.warning("metrics.database_unavailable %s", type(exc).__name__)
            yield GaugeMetricFamily(
                "waconv_database_up", "Whether the database answered this scrape", value=0
            )

    def _collect(self) -> Iterator[Metric]:
        from waconv.models import Account, ConnectorReceipt, Conversion, WebhookDelivery

        with self.services.db.transaction() as s:
            by_status = dict(
                s.execute(select(Conversion.status, func.count()).group_by(Conversion.status)).all()
            )
            oldest = s.scalar(
                select(func.min(Conversion.created_at)).where(
                    Conversion.status == Conversion.PENDING
                )
            )
            paused = s.scalar(select(func.count()).where(Account.status == Account.PAUSED))
            deliveries = dict(
                s.execute(
                    select(WebhookDelivery.status, func.count())
                    .where(WebhookDelivery.status != WebhookDelivery.PROCESSED)
                    .group_by(WebhookDelivery.status)
                ).all()
            )
            orders_waiting = s.scalar(
                select(func.count()).where(ConnectorReceipt.outcome == ConnectorReceipt.RECEIVED)
            )
        yield GaugeMetricFamily(
            "waconv_database_up", "Whether the database answered this scrape", value=1
        )
        statuses = GaugeMetricFamily(
            "waconv_conversions", "Conversion events by status", labels=["status"]
        )
        for status in Conversion.STATUSES:
            statuses.add_metric([status], by_status.get(status, 0))
        yield statuses
        yield GaugeMetricFamily(
            "waconv_outbox_queue_depth",
            "Conversion events waiting to be sent (pending + in flight)",
            value=by_status.get(Conversion.PENDING, 0),
        )
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "waconv_outbox_oldest_pending_age_seconds",
            "Age of the oldest conversion event not yet sent",
            value=max(age, 0.0),
        )
        yield GaugeMetricFamily(
            "waconv_accounts_paused", "Accounts whose sending is paused", value=paused or 0
        )
        yield GaugeMetricFamily(
            "waconv_webhook_deliveries_failed",
            "Stored deliveries whose processing failed (see `waconv webhooks replay`)",
            value=deliveries.get(WebhookDelivery.FAILED, 0),
        )
        yield GaugeMetricFamily(
            "waconv_webhook_deliveries_waiting",
            "Stored deliveries the background processor has not applied yet",
            value=deliveries.get(WebhookDelivery.RECEIVED, 0),
        )
        yield GaugeMetricFamily(
            "waconv_connector_orders_waiting",
            "Shopify orders stored during a burst that the background processor has not "
            "applied yet",
            value=orders_waiting or 0,
        )


def render_metrics(services: Services) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    state = CollectorRegistry()
    state.register(OutboxCollector(services))
    return generate_latest(counters) + generate_latest(state), CONTENT_TYPE_LATEST
