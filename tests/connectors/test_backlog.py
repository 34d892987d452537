"""Shopify orders stored during a burst and applied by the background processor."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from freezegun import freeze_time
from sqlalchemy import select

from tests.conftest import ADMIN_TOKEN
from tests.connectors.conftest import (
    CONNECTOR_SECRET,
    EMAIL,
    PLAIN_VALUES,
    SHOPIFY_SECRET,
    Shopify,
    shopify_order,
    start_clicked_conversation,
)
from waconv.clock import utcnow
from waconv.connectors import backlog, service
from waconv.customers.normalize import hashed
from waconv.models import ConnectorReceipt, Conversion
from waconv.services import Services
from waconv.webhooks import processor

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def no_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor is called by hand here: none starts beside the test."""
    monkeypatch.setattr(processor, "ensure_running", lambda services: None)


@pytest.fixture
def background(make_app: Callable[..., Flask], no_processor: None) -> Flask:
    app = make_app(
        shopify_secret=SHOPIFY_SECRET,
        connector_secret=CONNECTOR_SECRET,
        webhook_processing="background",
    )
    _quiet(_services(app))
    return app


def _services(app: Flask) -> Services:
    services: Services = app.extensions["waconv"]
    return services


def _quiet(services: Services) -> None:
    """No order was stored for the processor lately (other tests share the host's file)."""
    os.utime(backlog._host_file(services.settings.database_url).fileno(), (0, 0))


@pytest.fixture
def busy(background: Flask) -> Iterator[None]:
    """Another Shopify request of this process is in flight."""
    with backlog.turn(_services(background).settings) as inline:
        assert inline
        yield


def _clicked(app: Flask) -> Shopify:
    """A conversation from an ad click (its webhook applied), and a Shopify sender."""
    client = app.test_client()
    start_clicked_conversation(client)
    processor.drain(_services(app))
    return Shopify(client)


def _receipts(app: Flask) -> list[ConnectorReceipt]:
    with _services(app).db.transaction() as session:
        return list(session.scalars(select(ConnectorReceipt).order_by(ConnectorReceipt.id)))


def _conversions(app: Flask) -> list[Conversion]:
    with _services(app).db.transaction() as session:
        return list(session.scalars(select(Conversion)))


def test_a_quiet_order_is_applied_before_its_answer(background: Flask) -> None:
    r = _clicked(background).post(shopify_order())
    assert r.json["status"] == "matched"
    [conversion] = _conversions(background)
    assert conversion.id == r.json["conversion_id"]


def test_an_order_during_a_burst_is_stored_encrypted_and_applied_by_the_processor(
    background: Flask, busy: None
) -> None:
    shopify = _clicked(background)
    r = shopify.post(shopify_order(), webhook_id="burst-1")
    assert r.status_code == 200
    assert r.json == {"status": "received", "receipt_id": 1, "conversion_id": None}
    [receipt] = _receipts(background)
    assert receipt.outcome == ConnectorReceipt.RECEIVED
    assert receipt.body is not None and EMAIL.lower().encode() not in receipt.body.lower()
    assert b"total_price" not in receipt.body  # not the JSON: encrypted
    assert _conversions(background) == []
    assert shopify.post(shopify_order(), webhook_id="burst-1").json["status"] == "duplicate"

    assert backlog.apply_received(_services(background)) == 1
    [receipt] = _receipts(background)
    assert receipt.outcome == ConnectorReceipt.MATCHED
    assert (receipt.body, receipt.triggered_at) == (None, None)
    assert receipt.identifiers is not None
    assert receipt.identifiers["em"] == [hashed("em", EMAIL)]
    [conversion] = _conversions(background)
    assert (conversion.id, conversion.event_name) == (receipt.conversion_id, "Purchase")
    assert conversion.custom_data["value"] == 199.0
    again = shopify.post(shopify_order(), webhook_id="burst-1").json
    assert again == {"status": "duplicate", "receipt_id": 1, "conversion_id": conversion.id}
    assert backlog.apply_received(_services(background)) == 0


def test_metrics_count_the_orders_waiting(background: Flask, busy: None) -> None:
    shopify = _clicked(background)
    client = background.test_client()

    def waiting() -> str:
        text = client.get("/metrics").get_data(as_text=True)
        return next(line for line in text.splitlines() if line.startswith("waconv_connector_o"))

    assert waiting() == "waconv_connector_orders_waiting 0.0"
    for order_id in (1, 2):
        assert shopify.post(shopify_order(order_id=order_id)).json["status"] == "received"
    assert waiting() == "waconv_connector_orders_waiting 2.0"
    assert processor.drain(_services(background)) == 2  # transactions as its budget allows
    assert waiting() == "waconv_connector_orders_waiting 0.0"


def test_an_order_arriving_while_another_process_applies_one_is_stored(
    background: Flask,
) -> None:
    """The host's lock: another gunicorn worker applying an order holds it."""
    shopify = _clicked(background)
    path = backlog._host_file(_services(background).settings.database_url).name
    with open(path, "a+b") as other_worker:  # another open file: the lock is not shared
        fcntl.flock(other_worker, fcntl.LOCK_EX)
        assert shopify.post(shopify_order(order_id=1)).json["status"] == "received"
    _quiet(_services(background))
    assert shopify.post(shopify_order(order_id=2)).json["status"] == "matched"


def test_after_an_order_was_stored_the_next_ones_are_for_a_moment(background: Flask) -> None:
    shopify = _clicked(background)
    with backlog.turn(_services(background).settings):
        assert shopify.post(shopify_order(order_id=1)).json["status"] == "received"
    assert shopify.post(shopify_order(order_id=2)).json["status"] == "received"
    quiet_since = time.time() - backlog.QUIET_SECONDS - 0.1
    os.utime(
        backlog._host_file(_services(background).settings.database_url).fileno(),
        (
            quiet_since,
            quiet_since,
        ),
    )
    assert shopify.post(shopify_order(order_id=3)).json["status"] == "matched"


def test_orders_are_always_applied_in_the_request_without_a_secret_key_or_processor(
    make_app: Callable[..., Flask], no_processor: None
) -> None:
    for overrides in ({"secret_key": "", "webhook_processing": "background"}, {}):
        app = make_app(shopify_secret=SHOPIFY_SECRET, **overrides)
        shopify = _clicked(app)
        with backlog.turn(_services(app).settings):
            assert shopify.post(shopify_order()).json["status"] == "matched"


def test_a_body_the_key_cannot_open_is_kept_as_refused_with_the_reason(
    background: Flask, busy: None, make_app: Callable[..., Flask]
) -> None:
    assert _clicked(background).post(shopify_order()).json["status"] == "received"
    rekeyed = make_app(webhook_processing="background", secret_key="another key")
    assert backlog.apply_received(_services(rekeyed)) == 1
    [receipt] = _receipts(background)
    assert receipt.outcome == ConnectorReceipt.REFUSED
    assert receipt.reason is not None and "WACONV_SECRET_KEY" in receipt.reason
    assert receipt.body is None
    assert _conversions(background) == []


def test_an_order_that_fails_to_apply_does_not_hold_back_the_others(
    background: Flask, busy: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shopify = _clicked(background)
    for order_id in (1, 2, 3):
        assert shopify.post(shopify_order(order_id=order_id)).json["status"] == "received"
    real = service.apply_shopify

    def failing(session, delivery, region):  # type: ignore[no-untyped-def]
        if delivery.order["id"] == 2:
            raise RuntimeError(f"broke on {delivery.order['email']}")
        return real(session, delivery, region)

    monkeypatch.setattr(service, "apply_shopify", failing)
    caplog.set_level(logging.INFO)
    assert processor.drain(_services(background)) == 3
    outcomes = [(r.outcome, r.reason) for r in _receipts(background)]
    assert outcomes[0][0] == outcomes[2][0] == ConnectorReceipt.MATCHED
    assert outcomes[1] == (
        ConnectorReceipt.REFUSED,
        "waconv failed to apply it (RuntimeError); see the log",
    )
    assert len(_conversions(background)) == 2
    assert "connector.shopify.apply_failed" in caplog.text
    assert EMAIL.lower() not in caplog.text.lower()


def test_the_processor_applies_orders_once_the_burst_is_over(background: Flask, busy: None) -> None:
    services = _services(background)
    shopify = _clicked(background)
    for order_id in (1, 2, 3):
        assert shopify.post(shopify_order(order_id=order_id)).json["status"] == "received"
    # While requests arrive, the orders wait (an order applied now would hold up the requests).
    assert processor.drain(services, busy=lambda: True) == 0
    # ... and a transaction that began in a quiet moment stops at the next request.
    assert backlog.apply_received(services, busy=lambda: True) == 1
    assert processor.drain(services) == 2
    assert [r.outcome for r in _receipts(background)] == [ConnectorReceipt.MATCHED] * 3


def test_orders_waiting_past_the_resting_lag_are_applied_during_a_burst(
    background: Flask, busy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst that never ends must not leave its orders waiting for ever: past the lag, the
    processor applies them without stopping at each request and without resting."""
    services = _services(background)
    shopify = _clicked(background)
    with freeze_time(utcnow() - processor.MAX_RESTING_LAG - timedelta(seconds=1)):
        for order_id in (1, 2, 3):
            assert shopify.post(shopify_order(order_id=order_id)).json["status"] == "received"
    rests: list[float] = []
    monkeypatch.setattr(processor.time, "sleep", rests.append)
    stops: list[object] = []
    real = backlog.apply_received
    monkeypatch.setattr(
        backlog, "apply_received", lambda s, busy: stops.append(busy) or real(s, busy=busy)
    )
    assert processor.drain(services, busy=lambda: True) == 3
    assert stops and all(stop is None for stop in stops)  # no stop at each request
    assert rests == []
    assert [r.outcome for r in _receipts(background)] == [ConnectorReceipt.MATCHED] * 3


def test_no_plain_customer_data_in_the_database_file_while_an_order_waits(
    make_app: Callable[..., Flask], tmp_path: Path, no_processor: None
) -> None:
    from waconv import schema
    from waconv.db import make_engine

    database = tmp_path / "plain.sqlite3"
    engine = make_engine(f"sqlite:///{database}")
    schema.upgrade(engine)
    engine.dispose()
    app = make_app(
        database_url=f"sqlite:///{database}",
        shopify_secret=SHOPIFY_SECRET,
        webhook_processing="background",
    )
    shopify = _clicked(app)
    with backlog.turn(_services(app).settings):
        assert shopify.post(shopify_order()).json["status"] == "received"
    stored = b"".join(
        path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("plain.sqlite3")
    )
    for value in PLAIN_VALUES:
        assert value.lower().encode() not in stored.lower(), value
    # Not vacuous: the order is in the file, sealed.
    [receipt] = _receipts(app)
    assert receipt.outcome == ConnectorReceipt.RECEIVED and receipt.body
    assert receipt.body in stored


@pytest.mark.slow  # the processor is a child process
def test_a_stored_order_shows_within_seconds_with_nothing_but_the_app(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(shopify_secret=SHOPIFY_SECRET, webhook_processing="background")
    client = app.test_client()
    _quiet(_services(app))
    start_clicked_conversation(client)  # the processor applies it, then the order
    with backlog.turn(_services(app).settings):
        r = Shopify(client).post(shopify_order())
    assert r.json["status"] == "received"
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        items = client.get("/admin/conversions", headers=ADMIN).json["items"]
        if items:
            break
        time.sleep(0.05)  # waiting for another process, not a time rule
    assert [item["event_name"] for item in items] == ["Purchase"]


def test_a_database_not_migrated_is_a_503_for_a_stored_order_too(
    make_app: Callable[..., Flask], tmp_path: Path, no_processor: None
) -> None:
    app = make_app(
        database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        shopify_secret=SHOPIFY_SECRET,
        webhook_processing="background",
    )
    with backlog.turn(_services(app).settings):
        r = Shopify(app.test_client()).post(shopify_order())
    assert r.status_code == 503
    assert "waconv db upgrade" in r.json["error"]["message"]


def test_without_a_lock_file_orders_are_applied_in_their_requests(
    background: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unwritable(database_url: str) -> None:
        raise PermissionError("read-only temporary directory")

    shopify = _clicked(background)
    monkeypatch.setattr(backlog, "_host_file", unwritable)
    for order_id in (1, 2):
        assert shopify.post(shopify_order(order_id=order_id)).json["status"] == "matched"
    assert backlog._in_flight == 0
