"""Fixtures of the connector tests: an app with both connector secrets, signed senders, and
a Shopify order in the shape Shopify documents."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import payloads as p
from tests.conftest import signed_headers
from waconv.clock import to_unix, utcnow

SHOPIFY_SECRET = "shpss_test_shopify_secret"
# 32 random bytes in the whsec_ form Standard Webhooks senders (Svix, ...) give out.
CONNECTOR_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
WA_ID = "16505551234"
OTHER_WA_ID = "16505559999"
# Plain customer information a test order carries; none of it may be kept or logged.
EMAIL = "Sheena.Nelson+ctwa@Example.com"
FIRST_NAME = "Sheenaplain"
LAST_NAME = "Nelsonplain"
CITY = "Plainsville"
STREET = "742 Evergreen Terrace"
ZIP = "94035-1234"
PLAIN_VALUES = (EMAIL.lower(), FIRST_NAME, LAST_NAME, CITY, STREET, "Evergreen")

_ids = itertools.count(1)


def shopify_hmac(body: bytes, secret: str = SHOPIFY_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_order(
    *,
    phone: str | None = "+1 650-555-1234",
    email: str | None = EMAIL,
    order_id: int = 820982911946154508,
    **fields: Any,
) -> dict[str, Any]:
    """An order as Shopify's order webhooks send it (trimmed to what waconv reads)."""
    address = {
        "first_name": FIRST_NAME,
        "last_name": LAST_NAME,
        "address1": STREET,
        "city": CITY,
        "province": "California",
        "province_code": "CA",
        "zip": ZIP,
        "country": "United States",
        "country_code": "US",
        "phone": None,
    }
    order: dict[str, Any] = {
        "id": order_id,
        "name": "#1001",
        "email": email,
        "phone": phone,
        "currency": "USD",
        "total_price": "199.00",
        "created_at": "2026-03-01T10:00:00-05:00",
        "updated_at": "2026-03-01T10:00:05-05:00",
        "cancelled_at": None,
        "customer": {
            "id": 115310627314723954,
            "email": email,
            "first_name": FIRST_NAME,
            "last_name": LAST_NAME,
            "phone": None,
        },
        "billing_address": address,
        "shipping_address": address,
        "line_items": [
            {
                "id": 1,
                "sku": "IPOD-342-N",
                "variant_id": 4,
                "product_id": 7,
                "quantity": 1,
                "price": "199.00",
            },
            {
                "id": 2,
                "sku": "",
                "variant_id": 49148385,
                "product_id": 632910392,
                "quantity": 2,
                "price": "0.00",
            },
            {
                "id": 3,
                "sku": None,
                "variant_id": None,
                "product_id": 632910393,
                "quantity": 1,
                "price": "0.00",
            },
        ],
    }
    order.update(fields)
    return order


class Shopify:
    """Posts order webhooks as Shopify does: raw JSON, HMAC header, topic and webhook id."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def post(
        self,
        order: Any,
        *,
        topic: str = "orders/paid",
        webhook_id: str | None = None,
        secret: str = SHOPIFY_SECRET,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        body = raw if raw is not None else json.dumps(order).encode()
        sent = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": shopify_hmac(body, secret),
            "X-Shopify-Shop-Domain": "example.myshopify.com",
            "X-Shopify-Webhook-Id": webhook_id or f"b54557e4-bdd9-4b37-8a5f-{next(_ids):012d}",
            "X-Shopify-Triggered-At": utcnow().isoformat(),
        }
        sent.update(headers or {})
        return self.client.post("/connectors/shopify", data=body, headers=sent)


@pytest.fixture
def connector_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(shopify_secret=SHOPIFY_SECRET, connector_secret=CONNECTOR_SECRET)


@pytest.fixture
def connector_client(connector_app: Flask) -> FlaskClient:
    return connector_app.test_client()


@pytest.fixture
def shopify(connector_client: FlaskClient) -> Shopify:
    return Shopify(connector_client)


def start_clicked_conversation(client: FlaskClient, wa_id: str = WA_ID) -> str:
    """A conversation that started from an ad click (now, so its conversions are sendable)."""
    body = json.dumps(
        p.delivery(p.message(ref=p.referral(), ts=_now(), wa_id=wa_id), contacts=[p.contact(wa_id)])
    ).encode()
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200
    return wa_id


@pytest.fixture
def clicked(connector_client: FlaskClient) -> str:
    return start_clicked_conversation(connector_client)


def _now() -> int:
    return to_unix(utcnow())
