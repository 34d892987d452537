"""The On-Premises API shape (issue #20): the seed documents' own sample, signed and posted as
it is, is applied like a Cloud API notification of the default account and number."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401 - its C extension must load before freezegun swaps datetime
import pytest
from flask import Flask
from freezegun import freeze_time

from tests.conftest import PHONE_NUMBER_ID, WABA_ID, encode, signed_headers
from tests.webhooks.helpers import count, one, rows
from waconv.clock import from_unix
from waconv.models import Conversation, Conversion, Message, WebhookDelivery, WebhookNotice
from waconv.services import Services
from waconv.webhooks.ingest import replay

TS = 1750275992
NOW = from_unix(TS) + timedelta(hours=1)
CLICK = (
    "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPa"
    "OdRMv-_zfUQ2a"
)

# The seed documents' sample: the On-Premises API shape, a CTWA referral on a text.
SAMPLE: dict[str, Any] = {
    "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551234"}],
    "messages": [
        {
            "from": "16315551234",
            "id": "ABGGFlA5FpafAgo6EhpUJeLb7-ty",
            "referral": {
                "body": "Summer Succulents are here!",
                "headline": "Chat with us",
                "source_id": "120226305854810726",
                "source_type": "ad",
                "source_url": "https://fb.me/3cr4Wqqkv",
                "media_type": "image",
                "image_url": "https://scontent.xx.fbcdn.net/v/t45.1",
                "ctwa_clid": CLICK,
            },
            "text": {"body": "I would like to learn more"},
            "timestamp": str(TS),
            "type": "text",
        }
    ],
}

RULES = r"""
[[rules]]
name = "wants-to-learn-more"
on = "message"
match = "(?i)learn more"
event = "LeadSubmitted"
"""


@pytest.fixture
def build(rules_path: Path, make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    rules_path.write_text(RULES)
    with freeze_time(NOW):
        yield make_app


def post(app: Flask, payload: dict[str, Any]) -> Any:
    body = encode(payload)
    r = app.test_client().post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200, r.data
    return r


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["waconv"]
    return services


def assert_applied(services: Services) -> None:
    conversation = one(services, Conversation)
    assert (conversation.waba_id, conversation.phone_number_id) == (WABA_ID, PHONE_NUMBER_ID)
    assert conversation.wa_id == "16315551234"
    assert conversation.ctwa_clid == CLICK
    assert conversation.referral["source_id"] == "120226305854810726"
    conversion = one(services, Conversion)
    assert (conversion.rule_name, conversion.ctwa_clid) == ("wants-to-learn-more", CLICK)
    assert conversion.waba_id == WABA_ID
    assert one(services, Message).wamid == "ABGGFlA5FpafAgo6EhpUJeLb7-ty"


@pytest.mark.parametrize("wrapping", ["top level", "inside data"])
def test_the_seed_sample_gives_a_conversation_and_fires_its_rule(build, wrapping: str):
    app = build(waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID)
    payload = copy.deepcopy(SAMPLE) if wrapping == "top level" else {"data": [SAMPLE]}
    post(app, payload)
    services = services_of(app)
    assert_applied(services)
    assert count(services, WebhookNotice) == 0
    assert one(services, WebhookDelivery).status == WebhookDelivery.PROCESSED


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, ["WACONV_WABA_ID", "WACONV_PHONE_NUMBER_ID"]),
        ({"waba_id": WABA_ID}, ["WACONV_PHONE_NUMBER_ID"]),
        ({"phone_number_id": PHONE_NUMBER_ID}, ["WACONV_WABA_ID"]),
    ],
)
def test_missing_settings_keep_the_delivery_with_a_notice_until_replayed(
    build, settings: dict[str, str], named: list[str]
):
    app = build(**settings)
    post(app, {"data": [SAMPLE]})
    services = services_of(app)
    notice = one(services, WebhookNotice)
    assert notice.kind == "missing_setting"
    for name in named:
        assert name in notice.message
    assert "waconv webhooks replay" in notice.message
    assert count(services, Conversation) == 0
    delivery = one(services, WebhookDelivery)

    configured = build(waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID)
    [result] = replay(services_of(configured), ids=[delivery.id])
    assert result.ok
    assert_applied(services_of(configured))


def test_a_body_of_neither_shape_is_kept_with_a_notice(build):
    app = build(waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID)
    post(app, {"hello": "world"})
    services = services_of(app)
    notice = one(services, WebhookNotice)
    assert notice.kind == "unknown_shape"
    assert "On-Premises" in notice.message and "Cloud API" in notice.message
    assert count(services, Conversation) == 0
    assert [d.status for d in rows(services, WebhookDelivery)] == [WebhookDelivery.PROCESSED]
