"""WACONV_SEND_CUSTOMER_INFO: what Meta receives, and that plain customer data is kept nowhere."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import ADMIN_TOKEN, DATASET_ID, WABA_ID
from tests.connectors.conftest import (
    CONNECTOR_SECRET,
    EMAIL,
    PLAIN_VALUES,
    SHOPIFY_SECRET,
    WA_ID,
    Shopify,
    shopify_order,
    start_clicked_conversation,
)
from tests.dispatch.helpers import setup_account
from waconv.conversions.dispatcher import Dispatcher
from waconv.customers.normalize import hashed
from waconv.graph.fake import FakeGraph
from waconv.services import Services

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PH = hashlib.sha256(WA_ID.encode()).hexdigest()


def _app(make_app: Callable[..., Flask], send: bool) -> Flask:
    return make_app(
        shopify_secret=SHOPIFY_SECRET,
        connector_secret=CONNECTOR_SECRET,
        send_customer_info=send,
    )


def _send(app: Flask) -> None:
    services: Services = app.extensions["waconv"]
    setup_account(services)
    Dispatcher(services).run_once()


def test_off_by_default_user_data_is_only_the_ids(
    make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = _app(make_app, send=False)
    client = app.test_client()
    start_clicked_conversation(client)
    assert Shopify(client).post(shopify_order()).json["status"] == "matched"
    _send(app)
    [event] = fake_graph.events
    assert set(event["user_data"]) == {"whatsapp_business_account_id", "ctwa_clid"}


def test_on_user_data_carries_hashes_and_the_ids_unhashed(
    make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = _app(make_app, send=True)
    client = app.test_client()
    start_clicked_conversation(client)
    assert Shopify(client).post(shopify_order()).json["status"] == "matched"
    _send(app)
    [event] = fake_graph.events
    user_data = event["user_data"]
    assert user_data["whatsapp_business_account_id"] == WABA_ID
    assert user_data["ctwa_clid"].startswith("Aff-")  # as received, not hashed
    assert user_data["ph"] == PH
    assert user_data["em"] == hashed("em", EMAIL)
    assert user_data["fn"] == hashed("fn", "sheenaplain")
    assert user_data["ct"] == hashed("ct", "plainsville")
    assert user_data["st"] == hashed("st", "ca")
    assert user_data["zp"] == hashed("zp", "94035")
    assert (
        user_data["country"] == "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
    )
    assert user_data["external_id"] == hashed("external_id", "115310627314723954")
    assert fake_graph.events_requests()[-1]["path"].endswith(f"/{DATASET_ID}/events")


@pytest.mark.parametrize("source", ["admin", "rule"])
def test_ph_from_wa_id_on_admin_and_rule_conversions(
    make_app: Callable[..., Flask], fake_graph: FakeGraph, rules_path: Path, source: str
) -> None:
    rules_path.write_text(
        '[[rules]]\nname = "asked"\non = "message"\nmatch = "(?i)price"\nevent = "LeadSubmitted"\n'
    )
    app = _app(make_app, send=True)
    client = app.test_client()
    start_clicked_conversation(client)
    if source == "admin":
        r = client.post(
            "/admin/conversions",
            json={"wa_id": WA_ID, "event_name": "QualifiedLead"},
            headers=ADMIN,
        )
        assert r.status_code == 202
    else:
        from tests import payloads as p
        from tests.conftest import signed_headers
        from waconv.clock import to_unix, utcnow

        body = json.dumps(p.delivery(p.text("what is the price?", ts=to_unix(utcnow())))).encode()
        assert client.post("/webhook", data=body, headers=signed_headers(body)).status_code == 200
    _send(app)
    events = [e for e in fake_graph.events if e["event_name"] != "Purchase"]
    assert events
    assert all(e["user_data"]["ph"] == PH for e in events)


def test_plain_customer_data_is_in_no_log_and_no_database_file(
    make_app: Callable[..., Flask],
    fake_graph: FakeGraph,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = tmp_path / "plain.sqlite3"
    from waconv import schema
    from waconv.db import make_engine

    engine = make_engine(f"sqlite:///{database}")
    schema.upgrade(engine)
    engine.dispose()
    caplog.set_level(logging.DEBUG)
    app = make_app(
        database_url=f"sqlite:///{database}",
        shopify_secret=SHOPIFY_SECRET,
        connector_secret=CONNECTOR_SECRET,
        send_customer_info=True,
    )
    client = app.test_client()
    start_clicked_conversation(client)
    shopify = Shopify(client)
    assert shopify.post(shopify_order()).json["status"] == "matched"
    unmatched = shopify_order(order_id=5, phone="+44 7911 123456", email="other.plain@example.org")
    assert shopify.post(unmatched).json["status"] == "unmatched"
    listed = client.get("/admin/connectors/unmatched", headers=ADMIN).get_data(as_text=True)
    _send(app)
    app.extensions["waconv"].close()

    plain = [*PLAIN_VALUES, "other.plain@example.org", "7911123456"]
    stored = b"".join(
        path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("plain.sqlite3")
    )
    logged = caplog.text
    for value in plain:
        assert value.lower().encode() not in stored.lower(), value
        assert value.lower() not in logged.lower(), value
        assert value.lower() not in listed.lower(), value
    # The digests are there: the test would pass vacuously if nothing had been written.
    assert hashed("em", EMAIL).encode() in stored  # type: ignore[union-attr]
