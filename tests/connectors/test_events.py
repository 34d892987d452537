"""POST /connectors/events: Standard Webhooks signatures, the body, admin-shaped answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests import payloads as p
from tests.conftest import signed_headers
from tests.connectors.conftest import CONNECTOR_SECRET, EMAIL, WA_ID, Shopify, shopify_order
from waconv.clock import to_unix, utcnow
from waconv.connectors.signatures import sign_standard, standard_webhooks_key, verify_standard
from waconv.models import Conversion, CustomerIdentifier
from waconv.services import Services

KEY = base64.b64decode(CONNECTOR_SECRET.removeprefix("whsec_"))


def post_event(
    client: FlaskClient,
    body: Any,
    *,
    webhook_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    timestamp: int | None = None,
    key: bytes = KEY,
    signature: str | None = None,
) -> TestResponse:
    raw = json.dumps(body).encode()
    ts = to_unix(utcnow()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature or sign_standard(key, webhook_id, ts, raw),
    }
    return client.post("/connectors/events", data=raw, headers=headers)


def _conversions(app: Flask) -> list[Conversion]:
    services: Services = app.extensions["waconv"]
    with services.db.transaction() as session:
        return list(session.scalars(select(Conversion)))


# --- the signature ----------------------------------------------------------------------------


def test_the_standard_webhooks_example_verifies() -> None:
    # The specification's own example (and what the standardwebhooks package computes).
    key = standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign_standard(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == signature
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,bm90IHRoaXMgb25l {signature}",  # key rotation: any one
    }
    with freeze_time("2021-02-25T15:04:00Z"):
        assert verify_standard(key, headers.get, body, utcnow()) == headers["webhook-id"]


def test_signed_event_is_marked_like_the_admin_api(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    body = {
        "wa_id": WA_ID,
        "event_name": "Purchase",
        "order_id": "CRM-7",
        "custom_data": {"value": 10, "currency": "eur"},
    }
    r = post_event(connector_client, body)
    assert r.status_code == 202
    assert r.json["status"] == "pending"
    assert r.json["event_name"] == "Purchase"
    assert r.json["order_id"] == "CRM-7"
    assert r.json["custom_data"]["currency"] == "EUR"
    again = post_event(connector_client, body, webhook_id="msg_other")
    assert again.status_code == 200
    assert again.json["id"] == r.json["id"]
    [conversion] = _conversions(connector_app)
    assert conversion.source == "connector"


def test_the_same_event_again_after_the_user_wrote_to_another_number_is_the_same_record(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    body = {"wa_id": WA_ID, "event_name": "QualifiedLead"}
    first = post_event(connector_client, body, webhook_id="msg_first")
    assert first.status_code == 202
    # The user now writes to another of the business's numbers: their most recently active
    # conversation changes, the admin API's answer for the same request does not.
    other = json.dumps(
        p.delivery(
            p.text("hello", ref=p.referral("ANOTHER_CLICK"), ts=to_unix(utcnow()) + 1),
            phone_number_id="999000",
        )
    ).encode()
    connector_client.post("/webhook", data=other, headers=signed_headers(other))
    again = post_event(connector_client, body, webhook_id="msg_again")
    assert again.status_code == 200, again.json
    assert again.json["id"] == first.json["id"]
    assert len(_conversions(connector_app)) == 1


def test_a_phone_number_the_user_had_before_finds_them(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    body = json.dumps(p.delivery(p.changed_number(WA_ID, "16505550000"))).encode()
    connector_client.post("/webhook", data=body, headers=signed_headers(body))
    r = post_event(connector_client, {"phone": "+1 650 555 1234", "event_name": "QualifiedLead"})
    assert r.status_code == 202, r.json
    assert r.json["ctwa_clid"] is not None


@pytest.mark.parametrize(
    "tamper",
    [
        {"key": b"another key of 32 bytes........."},
        {"signature": "v1,AAAA"},
        {"signature": "v2,whatever"},
    ],
)
def test_wrong_signature_is_401_and_nothing_stored(
    connector_client: FlaskClient, connector_app: Flask, clicked: str, tamper: dict[str, Any]
) -> None:
    r = post_event(connector_client, {"wa_id": WA_ID, "event_name": "LeadSubmitted"}, **tamper)
    assert r.status_code == 401
    assert r.json["error"]["code"] == "wrong_signature"
    assert _conversions(connector_app) == []


def test_missing_signature_is_401(connector_client: FlaskClient, clicked: str) -> None:
    r = connector_client.post(
        "/connectors/events", json={"wa_id": WA_ID, "event_name": "LeadSubmitted"}
    )
    assert r.status_code == 401
    assert r.json["error"]["code"] == "missing_signature"


@pytest.mark.parametrize("skew", [-301, 301])
def test_stale_timestamp_is_401(
    connector_client: FlaskClient, connector_app: Flask, clicked: str, skew: int
) -> None:
    ts = to_unix(utcnow()) + skew
    r = post_event(connector_client, {"wa_id": WA_ID, "event_name": "LeadSubmitted"}, timestamp=ts)
    assert r.status_code == 401
    assert r.json["error"]["code"] == "stale_signature"
    assert _conversions(connector_app) == []


def test_within_five_minutes_is_accepted(connector_client: FlaskClient, clicked: str) -> None:
    ts = to_unix(utcnow()) - 290
    r = post_event(connector_client, {"wa_id": WA_ID, "event_name": "LeadSubmitted"}, timestamp=ts)
    assert r.status_code == 202


def test_without_a_secret_the_connector_is_off(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    r = post_event(app.test_client(), {"wa_id": WA_ID, "event_name": "LeadSubmitted"})
    assert r.status_code == 503
    assert "WACONV_CONNECTOR_SECRET" in r.json["error"]["message"]


# --- the body ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"wa_id": WA_ID, "event_name": "Lead"}, 400, "event_name"),
        ({"wa_id": WA_ID, "event_name": "Purchase"}, 400, "custom_data"),
        ({"event_name": "LeadSubmitted"}, 400, "wa_id"),
        ({"wa_id": WA_ID, "email": EMAIL, "event_name": "LeadSubmitted"}, 400, "email"),
        ({"wa_id": WA_ID, "event_name": "LeadSubmitted", "colour": 1}, 400, "colour"),
        ({"phone": "n/a", "event_name": "LeadSubmitted"}, 400, "phone"),
        ({"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": 1}, 400, "event_time"),
        ([1, 2], 400, "body"),
    ],
)
def test_invalid_bodies_name_the_field(
    connector_client: FlaskClient, clicked: str, body: Any, status: int, field: str
) -> None:
    r = post_event(connector_client, body)
    assert r.status_code == status
    assert r.json["error"]["field"] == field


def test_unknown_user_is_404(connector_client: FlaskClient, clicked: str) -> None:
    r = post_event(connector_client, {"wa_id": "19999999999", "event_name": "LeadSubmitted"})
    assert r.status_code == 404
    r = post_event(connector_client, {"email": "nobody@example.com", "event_name": "LeadSubmitted"})
    assert r.status_code == 404
    assert "nobody" not in r.get_data(as_text=True)


def test_by_phone_in_any_format(connector_client: FlaskClient, clicked: str) -> None:
    r = post_event(connector_client, {"phone": "+1 (650) 555-1234", "event_name": "QualifiedLead"})
    assert r.status_code == 202
    assert "6505551234" not in json.dumps(r.json.get("error", {}))


def test_by_an_email_an_earlier_conversion_named(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    first = post_event(
        connector_client,
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "user_data": {"em": EMAIL}},
    )
    assert first.status_code == 202
    r = post_event(
        connector_client,
        {"email": f"  {EMAIL.upper()} ", "event_name": "QualifiedLead"},
        webhook_id="msg_2",
    )
    assert r.status_code == 202
    assert r.json["conversation_id"] == first.json["conversation_id"]
    # ...and a Shopify order with only that email matches too.
    shopify = Shopify(connector_client)
    assert shopify.post(shopify_order(phone=None, email=EMAIL)).json["status"] == "matched"


def test_conversation_without_click_is_422(connector_client: FlaskClient) -> None:
    from tests import payloads as p
    from tests.conftest import signed_headers

    body = json.dumps(p.delivery(p.text("hi"))).encode()
    connector_client.post("/webhook", data=body, headers=signed_headers(body))
    r = post_event(connector_client, {"phone": "+16505551234", "event_name": "LeadSubmitted"})
    assert r.status_code == 422


def test_user_data_is_kept_only_hashed(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    r = post_event(
        connector_client,
        {
            "wa_id": WA_ID,
            "event_name": "LeadSubmitted",
            "user_data": {"fn": "Mary", "country": "US", "nickname": "ignored"},
        },
    )
    assert r.status_code == 202
    services: Services = connector_app.extensions["waconv"]
    with services.db.transaction() as session:
        kept = {(c.field, c.value_sha256) for c in session.scalars(select(CustomerIdentifier))}
    assert kept == {
        ("fn", "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
        ("country", "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a\ud800@example.com", "event_name": "LeadSubmitted"}, "email"),
        ({"phone": ["+16505551234"], "event_name": "LeadSubmitted"}, "phone"),
        ({"wa_id": "\x00", "event_name": "LeadSubmitted"}, "wa_id"),
        ({"wa_id": WA_ID, "event_name": "LeadSubmitted", "user_data": "em"}, "user_data"),
    ],
)
def test_hostile_bodies_are_400_naming_the_field(
    connector_client: FlaskClient, clicked: str, body: dict[str, Any], field: str
) -> None:
    r = post_event(connector_client, body)
    assert r.status_code == 400
    assert r.json["error"]["field"] == field


def test_hostile_user_data_is_left_out(
    connector_client: FlaskClient, connector_app: Flask, clicked: str
) -> None:
    body = {
        "wa_id": WA_ID,
        "event_name": "LeadSubmitted",
        "user_data": {"fn": "\ud800", "em": ["x"], "ct": 12, "zp": "\x00"},
    }
    assert post_event(connector_client, body).status_code == 202


def test_secrets_are_in_no_answer_and_no_log(
    connector_client: FlaskClient, clicked: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.connectors.conftest import SHOPIFY_SECRET

    caplog.set_level("DEBUG")
    answers = [
        post_event(connector_client, {"wa_id": WA_ID, "event_name": "LeadSubmitted"}),
        post_event(connector_client, {"wa_id": WA_ID, "event_name": "X"}, key=b"k" * 32),
        Shopify(connector_client).post(shopify_order(), secret="wrong"),
        Shopify(connector_client).post(shopify_order()),
    ]
    seen = caplog.text + "".join(r.get_data(as_text=True) for r in answers)
    for secret in (SHOPIFY_SECRET, CONNECTOR_SECRET, CONNECTOR_SECRET.removeprefix("whsec_")):
        assert secret not in seen
