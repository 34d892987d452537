"""POST /connectors/shopify: signatures, mapping, matching, idempotency, the unmatched list."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests import payloads as p
from tests.conftest import ADMIN_TOKEN, signed_headers
from tests.connectors.conftest import (
    CONNECTOR_SECRET,
    EMAIL,
    OTHER_WA_ID,
    SHOPIFY_SECRET,
    WA_ID,
    Shopify,
    shopify_hmac,
    shopify_order,
    start_clicked_conversation,
)
from waconv.customers.normalize import hashed
from waconv.models import ConnectorReceipt, Conversation, Conversion, CustomerIdentifier
from waconv.services import Services

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _services(app: Flask) -> Services:
    services: Services = app.extensions["waconv"]
    return services


def _conversions(app: Flask) -> list[Conversion]:
    with _services(app).db.transaction() as session:
        return list(session.scalars(select(Conversion).order_by(Conversion.id)))


def _receipts(app: Flask) -> int:
    with _services(app).db.transaction() as session:
        return session.scalar(select(func.count()).select_from(ConnectorReceipt)) or 0


# --- signatures -------------------------------------------------------------------------------


def test_wrong_signature_is_401_and_nothing_stored(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    r = shopify.post(shopify_order(), secret="not-the-secret")
    assert r.status_code == 401
    assert r.json["error"]["code"] == "wrong_signature"
    assert r.json["error"]["field"] == "X-Shopify-Hmac-Sha256"
    assert _receipts(connector_app) == 0
    assert _conversions(connector_app) == []


def test_missing_signature_is_401(shopify: Shopify, connector_app: Flask, clicked: str) -> None:
    r = shopify.post(shopify_order(), headers={"X-Shopify-Hmac-Sha256": ""})
    assert r.status_code == 401
    assert r.json["error"]["code"] == "missing_signature"
    assert _receipts(connector_app) == 0


def test_signature_over_other_bytes_is_401(shopify: Shopify, connector_app: Flask) -> None:
    body = json.dumps(shopify_order()).encode()
    # The same JSON re-serialized with other spacing: the HMAC is over the raw bytes.
    r = shopify.post(
        None,
        raw=json.dumps(shopify_order(), indent=1).encode(),
        headers={"X-Shopify-Hmac-Sha256": shopify_hmac(body)},
    )
    assert r.status_code == 401
    assert _receipts(connector_app) == 0


def test_without_a_secret_the_connector_is_off(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    r = Shopify(app.test_client()).post(shopify_order())
    assert r.status_code == 503
    assert "WACONV_SHOPIFY_SECRET" in r.json["error"]["message"]
    assert _receipts(app) == 0


def test_signed_body_that_is_not_json_is_400(shopify: Shopify) -> None:
    r = shopify.post(None, raw=b"not json")
    assert r.status_code == 400
    assert r.json["error"]["field"] == "body"


# --- mapping ----------------------------------------------------------------------------------


def test_paid_order_is_a_purchase_matched_by_phone(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    r = shopify.post(shopify_order())
    assert r.status_code == 200
    assert r.json["status"] == "matched"
    [conversion] = _conversions(connector_app)
    assert conversion.id == r.json["conversion_id"]
    assert conversion.event_name == "Purchase"
    assert conversion.source == "shopify"
    assert conversion.order_id == "820982911946154508"
    assert conversion.custom_data == {
        "order_id": "820982911946154508",
        "value": 199.0,
        "currency": "USD",
        "contents": [
            {"id": "IPOD-342-N", "quantity": 1, "item_price": 199.0},
            {"id": "49148385", "quantity": 2, "item_price": 0.0},
            {"id": "632910393", "quantity": 1, "item_price": 0.0},
        ],
        "num_items": 4,
    }


@pytest.mark.parametrize(
    ("topic", "event_name"),
    [("orders/fulfilled", "OrderShipped"), ("orders/cancelled", "OrderCanceled")],
)
def test_fulfilled_and_cancelled(
    shopify: Shopify, connector_app: Flask, clicked: str, topic: str, event_name: str
) -> None:
    r = shopify.post(shopify_order(), topic=topic)
    assert r.json["status"] == "matched"
    [conversion] = _conversions(connector_app)
    assert conversion.event_name == event_name
    assert conversion.custom_data is not None
    assert conversion.custom_data["order_id"] == "820982911946154508"


def test_other_topics_are_acknowledged_and_ignored(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    r = shopify.post(shopify_order(), topic="orders/create")
    assert r.status_code == 200
    assert r.json["status"] == "ignored"
    assert _conversions(connector_app) == []


@pytest.mark.parametrize(
    ("phone", "region"),
    [
        ("16505551234", ""),
        ("+1 (650) 555-1234", ""),
        ("650 555 1234", "US"),
        ("(650) 555-1234", "US"),
    ],
)
def test_phone_formats(make_app: Callable[..., Flask], phone: str, region: str) -> None:
    app = make_app(
        shopify_secret=SHOPIFY_SECRET,
        connector_secret=CONNECTOR_SECRET,
        default_phone_region=region,
    )
    start_clicked_conversation(app.test_client())
    r = Shopify(app.test_client()).post(shopify_order(phone=phone))
    assert r.json["status"] == "matched"


def test_phone_of_the_shipping_address(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    order = shopify_order(phone=None)
    order["shipping_address"] = {**order["shipping_address"], "phone": "+16505551234"}
    assert shopify.post(order).json["status"] == "matched"


def test_a_number_the_user_had_before_still_matches(
    shopify: Shopify, connector_app: Flask, connector_client: FlaskClient, clicked: str
) -> None:
    # The user changed number after the click; the shop still has the old one.
    body = json.dumps(p.delivery(p.changed_number(WA_ID, "16505550000"))).encode()
    assert connector_client.post("/webhook", data=body, headers=signed_headers(body)).json
    r = shopify.post(shopify_order(phone="+1 650-555-1234"))
    assert r.json["status"] == "matched", r.json
    with _services(connector_app).db.transaction() as session:
        conversation = session.get(Conversation, _conversions(connector_app)[0].conversation_id)
        assert conversation is not None and conversation.wa_id == "16505550000"


def test_matched_by_an_email_an_earlier_conversion_named(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    first = shopify.post(shopify_order(order_id=1))
    assert first.json["status"] == "matched"
    # A later order with no phone: the email the first one named finds the conversation.
    r = shopify.post(shopify_order(order_id=2, phone=None, email=EMAIL.upper()))
    assert r.json["status"] == "matched"
    with _services(connector_app).db.transaction() as session:
        receipt = session.get(ConnectorReceipt, r.json["receipt_id"])
        assert receipt is not None
        assert receipt.matched_by == "email"
    assert len(_conversions(connector_app)) == 2


def test_an_order_for_a_conversation_without_click_is_unmatched(
    shopify: Shopify, connector_app: Flask
) -> None:
    from tests import payloads as p
    from tests.conftest import signed_headers

    body = json.dumps(
        p.delivery(p.text("hi", wa_id=OTHER_WA_ID), contacts=[p.contact(OTHER_WA_ID)])
    ).encode()
    shopify.client.post("/webhook", data=body, headers=signed_headers(body))
    r = shopify.post(shopify_order(phone="+1 650 555 9999"))
    assert r.json["status"] == "unmatched"


# --- idempotency ------------------------------------------------------------------------------


def test_same_webhook_id_again_has_no_second_effect(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    first = shopify.post(shopify_order(), webhook_id="wh-1")
    again = shopify.post(shopify_order(), webhook_id="wh-1")
    assert again.status_code == 200
    assert again.json["status"] == "duplicate"
    assert again.json["conversion_id"] == first.json["conversion_id"]
    assert _receipts(connector_app) == 1
    assert len(_conversions(connector_app)) == 1


def test_same_order_under_another_webhook_id_is_the_same_conversion(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    first = shopify.post(shopify_order(), webhook_id="wh-1")
    second = shopify.post(shopify_order(), webhook_id="wh-2")
    assert second.json["status"] == "matched"
    assert second.json["conversion_id"] == first.json["conversion_id"]
    assert len(_conversions(connector_app)) == 1


def test_an_operator_marking_the_same_order_finds_the_shopify_conversion(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    first = shopify.post(shopify_order())
    r = shopify.client.post(
        "/admin/conversions",
        json={
            "wa_id": WA_ID,
            "event_name": "Purchase",
            "order_id": "820982911946154508",
            "custom_data": {"value": 199.0, "currency": "USD"},
        },
        headers=ADMIN,
    )
    assert r.status_code == 200
    assert r.json["id"] == first.json["conversion_id"]


# --- unmatched orders -------------------------------------------------------------------------


def test_unmatched_orders_are_kept_counted_and_listed(
    shopify: Shopify, connector_app: Flask
) -> None:
    r = shopify.post(shopify_order(order_id=77), webhook_id="wh-unmatched")
    assert r.status_code == 200
    assert r.json["status"] == "unmatched"
    listed = shopify.client.get("/admin/connectors/unmatched", headers=ADMIN)
    assert listed.status_code == 200
    assert listed.json["total"] == 1
    [item] = listed.json["items"]
    assert item["order_id"] == "77"
    assert item["webhook_id"] == "wh-unmatched"
    assert item["event_name"] == "Purchase"
    assert item["outcome"] == "unmatched"
    assert EMAIL.lower() not in json.dumps(listed.json).lower()
    assert "6505551234" not in json.dumps(listed.json)
    assert shopify.client.get("/admin/connectors/unmatched").status_code == 401


def test_unmatched_list_pages(shopify: Shopify) -> None:
    for n in range(3):
        shopify.post(shopify_order(order_id=n + 1))
    first = shopify.client.get("/admin/connectors/unmatched?limit=2", headers=ADMIN).json
    assert [i["order_id"] for i in first["items"]] == ["3", "2"]
    rest = shopify.client.get(
        f"/admin/connectors/unmatched?limit=2&cursor={first['next_cursor']}", headers=ADMIN
    ).json
    assert [i["order_id"] for i in rest["items"]] == ["1"]
    assert rest["next_cursor"] is None
    bad = shopify.client.get("/admin/connectors/unmatched?limit=0", headers=ADMIN)
    assert bad.status_code == 400
    assert bad.json["error"]["field"] == "limit"


def test_an_order_meta_would_refuse_is_kept_with_the_reason(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    r = shopify.post(shopify_order(currency="dollars"))
    assert r.status_code == 200
    assert r.json["status"] == "refused"
    [item] = shopify.client.get("/admin/connectors/unmatched", headers=ADMIN).json["items"]
    assert "currency" in item["reason"]
    assert _conversions(connector_app) == []


# --- customer information kept hashed ----------------------------------------------------------


def test_only_digests_of_the_customer_are_kept(
    shopify: Shopify, connector_app: Flask, clicked: str
) -> None:
    shopify.post(shopify_order())
    with _services(connector_app).db.transaction() as session:
        kept = {
            (row.field, row.value_sha256) for row in session.scalars(select(CustomerIdentifier))
        }
    assert ("em", hashed("em", EMAIL)) in kept
    assert ("fn", hashed("fn", "Sheenaplain")) in kept
    assert ("ct", hashed("ct", "Plainsville")) in kept
    assert ("zp", hashed("zp", "94035")) in kept
    assert ("st", hashed("st", "ca")) in kept
    assert ("country", hashed("country", "us")) in kept
    assert ("external_id", hashed("external_id", "115310627314723954")) in kept
    assert all(len(digest) == 64 for _, digest in kept)


# --- hostile orders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "\ud800"},
        {"id": "12\x0034"},
        {"id": "9" * 300},
        {"id": [1]},
        {"id": True},
        {"email": "a\ud800@example.com", "phone": None},
        {"customer": {"first_name": "\ud800", "id": "\x00"}},
        {"total_price": "1e999999999"},
        {"total_price": "HUGE"},  # the JSON number 1e999999999, see below
        {"currency": "\x00\x00\x00"},
        {"line_items": [{"sku": "\ud800", "quantity": "many", "price": "abc"}]},
        {"line_items": "nope", "billing_address": [], "shipping_address": "x"},
        {"phone": "+" + "9" * 40},
        {"phone": "\u0661\u0666\u0665\u0660\u0665\u0665\u0665\u0661\u0662\u0663\u0664"},
    ],
)
def test_hostile_orders_are_acknowledged_without_a_server_error(
    shopify: Shopify, clicked: str, changes: dict[str, object]
) -> None:
    order = shopify_order()
    order.update(changes)
    body = json.dumps(order).encode().replace(b'"HUGE"', b"1e999999999")
    r = shopify.post(None, raw=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["status"] in ("matched", "unmatched", "refused")


def test_a_database_not_migrated_is_a_503_naming_the_command(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(
        database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        shopify_secret=SHOPIFY_SECRET,
        connector_secret=CONNECTOR_SECRET,
    )
    r = Shopify(app.test_client()).post(shopify_order())
    assert r.status_code == 503
    assert "waconv db upgrade" in r.json["error"]["message"]
    assert r.headers["Retry-After"] == "5"
