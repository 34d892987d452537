"""Rules end to end: a signed webhook in, the conversions it fires in the outbox.

Each test writes its rules file, builds the app, posts deliveries shaped like Meta's, and reads
the database. The clock is frozen an hour after the payloads' default message time, so the
7-day rule is exercised on purpose only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401 - its C extension must load before freezegun swaps datetime
import pytest
from flask import Flask
from freezegun import freeze_time

from tests import payloads as p
from tests.conftest import WABA_ID, encode, signed_headers
from tests.webhooks.helpers import count, one, rows
from waconv.clock import from_unix
from waconv.models import Conversation, Conversion, WebhookDelivery, WebhookNotice
from waconv.services import Services

TS = 1750275992  # the payloads' default message time, 2025-06-18T19:46:32Z
NOW = from_unix(TS) + timedelta(hours=1)

# The contract's example (two comments shortened to fit the line length).
CONTRACT_RULES = r"""
[[rules]]
name = "asked-for-price"        # unique; part of the event_id of what it fires
on = "message"                  # message (text, button, interactive) | order | automatic_event
match = "(?i)\\b(price|buy)\\b"  # optional regex on the text, button text or reply title
event = "LeadSubmitted"         # one of the 14 business-messaging event names
once = true                     # at most once per conversation and click (default true)

[[rules]]
name = "cart-sent"
on = "order"                    # value = sum of item_price x quantity, currency, contents
event = "InitiateCheckout"
"""

EVERY_PRICE_QUESTION = """
[[rules]]
name = "every-price-question"
on = "message"
match = "(?i)\\\\bprice\\\\b"
event = "QualifiedLead"
once = false
"""

AUTOMATIC_PURCHASE = """
[[rules]]
name = "meta-purchase"
on = "automatic_event"
match = "^Purchase$"
event = "Purchase"
"""


class Chat:
    """An app built from a rules file, and a way to post deliveries to it."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client = app.test_client()
        self.services: Services = app.extensions["waconv"]

    def post(self, payload: dict[str, Any]) -> Any:
        body = encode(payload)
        r = self.client.post("/webhook", data=body, headers=signed_headers(body))
        assert r.status_code == 200, r.data
        return r

    def send(self, *messages: dict[str, Any], **kw: Any) -> Any:
        return self.post(p.delivery(*messages, **kw))

    def conversions(self) -> list[Conversion]:
        return rows(self.services, Conversion)


@pytest.fixture
def frozen() -> Iterator[None]:
    with freeze_time(NOW):
        yield


@pytest.fixture
def chat_with(
    frozen: None, rules_path: Path, make_app: Callable[..., Flask]
) -> Callable[[str], Chat]:
    def build(rules: str) -> Chat:
        rules_path.write_text(rules)
        return Chat(make_app())

    return build


@pytest.fixture
def chat(chat_with: Callable[[str], Chat]) -> Chat:
    return chat_with(CONTRACT_RULES)


def _clicked(chat: Chat, clid: str = p.CLICK_ID, ts: int = TS - 60) -> None:
    """The user arrives from an ad with a message that fires nothing."""
    chat.send(p.message(ts=ts, ref=p.referral(ctwa_clid=clid), text={"body": "Hello!"}))
    assert chat.conversions() == []


# --- on = "message" ---------------------------------------------------------------------------


def test_matching_text_fires_the_rule_with_the_message_time_and_the_click(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.text("What's the PRICE of the big one?", ts=TS))
    conversion = one(chat.services, Conversion)
    conversation = one(chat.services, Conversation)
    assert conversion.event_name == "LeadSubmitted"
    assert conversion.event_time == from_unix(TS)  # when the customer wrote, not now
    assert conversion.ctwa_clid == p.CLICK_ID
    assert conversion.waba_id == WABA_ID
    assert conversion.conversation_id == conversation.id
    assert conversion.source == "rule"
    assert conversion.rule_name == "asked-for-price"
    assert conversion.event_id.startswith("asked-for-price.")
    assert conversion.status == Conversion.PENDING
    assert conversion.custom_data is None
    assert conversion.next_attempt_at == NOW


def test_the_click_message_itself_can_fire(chat: Chat) -> None:
    chat.send(p.text("I want to buy this", ts=TS, ref=p.referral()))
    assert one(chat.services, Conversion).ctwa_clid == p.CLICK_ID


@pytest.mark.parametrize(
    "text",
    ["Can I get more info about this?", "pricey!", "buying soon", "prices?", "BUYER", ""],
)
def test_text_that_does_not_match_fires_nothing(chat: Chat, text: str) -> None:
    _clicked(chat)
    chat.send(p.text(text, ts=TS))
    assert chat.conversions() == []
    assert count(chat.services, WebhookNotice, WebhookNotice.kind == "rule_refused") == 0


def test_a_conversation_without_a_click_fires_nothing(chat: Chat) -> None:
    chat.send(p.text("what is the price?", ts=TS))
    chat.send(p.order([_item(3, 7.99)], ts=TS + 1))
    assert one(chat.services, Conversation).ctwa_clid is None
    assert chat.conversions() == []


def test_a_status_ad_referral_without_click_id_fires_nothing(chat: Chat) -> None:
    chat.send(p.text("price?", ts=TS, ref=p.referral(ctwa_clid=None)))
    assert chat.conversions() == []


def test_once_true_fires_once_per_click(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.text("price?", ts=TS))
    chat.send(p.text("and the price with shipping?", ts=TS + 60))
    conversion = one(chat.services, Conversion)
    assert conversion.event_time == from_unix(TS)


def test_once_false_fires_for_every_matching_message(chat_with: Callable[[str], Chat]) -> None:
    chat = chat_with(EVERY_PRICE_QUESTION)
    _clicked(chat)
    chat.send(p.text("price?", ts=TS))
    chat.send(p.text("and the price with shipping?", ts=TS + 60))
    fired = chat.conversions()
    assert [c.event_time for c in fired] == [from_unix(TS), from_unix(TS + 60)]
    assert {c.event_name for c in fired} == {"QualifiedLead"}
    assert len({c.event_id for c in fired}) == 2


def test_a_new_click_fires_again(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.text("price?", ts=TS))
    _clicked_again = p.message(
        ts=TS + 100, ref=p.referral(ctwa_clid="CLICK-2"), text={"body": "hi"}
    )
    chat.send(_clicked_again)
    chat.send(p.text("price again?", ts=TS + 200))
    chat.send(p.text("one more price question", ts=TS + 300))
    fired = chat.conversions()
    assert [(c.ctwa_clid, c.event_time) for c in fired] == [
        (p.CLICK_ID, from_unix(TS)),
        ("CLICK-2", from_unix(TS + 200)),
    ]
    assert len({c.conversation_id for c in fired}) == 1


def test_a_message_processed_after_a_newer_click_fires_under_the_click_of_its_time(
    chat: Chat,
) -> None:
    # Meta does not promise order. A message written under the first click but processed
    # after a second one belongs to the first: under the second it would be dated before
    # the click it credits, and would use up that click's `once`.
    _clicked(chat)  # CLICK_ID at TS - 60
    chat.send(p.message(ts=TS + 100, ref=p.referral(ctwa_clid="CLICK-2"), text={"body": "hi"}))
    chat.send(p.text("price?", ts=TS))  # written before CLICK-2, delivered after it
    chat.send(p.text("and the price now?", ts=TS + 200))
    fired = chat.conversions()
    assert [(c.ctwa_clid, c.event_time) for c in fired] == [
        (p.CLICK_ID, from_unix(TS)),
        ("CLICK-2", from_unix(TS + 200)),
    ]


def test_a_message_older_than_every_click_fires_nothing(chat: Chat) -> None:
    _clicked(chat, ts=TS)
    chat.send(p.text("price?", ts=TS - 30))  # written before the click, delivered after it
    assert chat.conversions() == []


def test_a_message_processed_before_its_click_fires_once_the_click_arrives(chat: Chat) -> None:
    # The follow-up is processed first (no click known), then the click message written
    # before it: the follow-up's rule fires then, under that click, at its own time.
    chat.send(p.text("what's the price?", ts=TS + 10))
    assert chat.conversions() == []
    chat.send(p.message(ts=TS, ref=p.referral(), text={"body": "hi"}))
    fired = chat.conversions()
    assert [(c.ctwa_clid, c.event_time) for c in fired] == [(p.CLICK_ID, from_unix(TS + 10))]
    # Processing the same again fires nothing more (once per click).
    chat.send(p.text("price, again?", ts=TS + 20))
    assert len(chat.conversions()) == 1


def test_in_one_delivery_a_follow_up_listed_before_its_click_fires(chat: Chat) -> None:
    follow_up = p.text("I want to buy", ts=TS + 10)
    click = p.message(ts=TS, ref=p.referral(), text={"body": "hi"})
    chat.send(follow_up, click)
    assert [(c.ctwa_clid, c.event_time) for c in chat.conversions()] == [
        (p.CLICK_ID, from_unix(TS + 10))
    ]


def test_a_late_click_does_not_credit_messages_an_earlier_click_covered(
    chat_with: Callable[[str], Chat],
) -> None:
    chat = chat_with(EVERY_PRICE_QUESTION)
    _clicked(chat, ts=TS)  # CLICK_ID at TS
    chat.send(p.text("price?", ts=TS + 50))  # fires under CLICK_ID
    chat.send(p.text("price now?", ts=TS - 20))  # before every click: nothing yet
    # A click older than both arrives last: it covers the message before CLICK_ID only.
    chat.send(p.message(ts=TS - 30, ref=p.referral(ctwa_clid="CLICK-0"), text={"body": "hey"}))
    fired = sorted((c.event_time, c.ctwa_clid) for c in chat.conversions())
    assert fired == [(from_unix(TS - 20), "CLICK-0"), (from_unix(TS + 50), p.CLICK_ID)]


def test_a_late_status_ad_referral_does_not_replace_a_newer_one(chat: Chat) -> None:
    # Status ads carry no ctwa_clid: the conversation keeps the latest such ad with its time.
    newer = p.referral(ctwa_clid=None, source_id="STATUS-NEW")
    older = p.referral(ctwa_clid=None, source_id="STATUS-OLD")
    chat.send(p.message(ts=TS, ref=newer, text={"body": "hi"}))
    chat.send(p.message(ts=TS - 100, ref=older, text={"body": "hello"}))
    conversation = one(chat.services, Conversation)
    assert conversation.referral["source_id"] == "STATUS-NEW"
    assert conversation.clicked_at == from_unix(TS)
    chat.send(
        p.message(ts=TS + 100, ref=p.referral(ctwa_clid=None, source_id="S3"), text={"body": "x"})
    )
    conversation = one(chat.services, Conversation)
    assert (conversation.referral["source_id"], conversation.clicked_at) == (
        "S3",
        from_unix(TS + 100),
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: p.button("Buy now", ts=TS),
        lambda: p.button_reply("Buy", "buy-button", ts=TS),
        lambda: p.list_reply("Price list", ts=TS),
    ],
    ids=["button", "button_reply", "list_reply"],
)
def test_buttons_and_interactive_replies_trigger_message_rules(
    chat: Chat, build: Callable[[], dict[str, Any]]
) -> None:
    _clicked(chat)
    chat.send(build())
    conversion = one(chat.services, Conversion)
    assert (conversion.rule_name, conversion.event_time) == ("asked-for-price", from_unix(TS))


def test_message_types_narrows_a_rule(chat_with: Callable[[str], Chat]) -> None:
    chat = chat_with(
        """
[[rules]]
name = "tapped-buy"
on = "message"
message_types = ["button", "interactive"]
match = "(?i)^buy"
event = "AddToCart"
once = false
"""
    )
    _clicked(chat)
    chat.send(p.text("buy", ts=TS))
    assert chat.conversions() == []
    chat.send(p.button_reply("Buy", ts=TS + 1))
    assert one(chat.services, Conversion).event_name == "AddToCart"


# --- on = "order" -----------------------------------------------------------------------------


def _item(quantity: Any, price: Any, sku: str = "di9ozbzfi4", currency: str = "USD") -> dict:
    return {
        "product_retailer_id": sku,
        "quantity": quantity,
        "item_price": price,
        "currency": currency,
    }


def test_order_value_is_computed_exactly(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.order([_item(3, 7.99)], ts=TS))
    conversion = one(chat.services, Conversion)
    assert conversion.rule_name == "cart-sent"
    assert conversion.event_name == "InitiateCheckout"
    assert conversion.event_time == from_unix(TS)
    assert conversion.custom_data == {
        "value": 23.97,  # not 23.970000000000002
        "currency": "USD",
        "contents": [{"id": "di9ozbzfi4", "quantity": 3, "item_price": 7.99}],
        "num_items": 3,
    }


def test_order_of_several_items_and_prices_as_strings(chat: Chat) -> None:
    _clicked(chat)
    items = [_item(1, 0.1, "a"), _item("2", "0.2", "b", "usd"), _item(1, 1000, "c")]
    chat.send(p.order(items, ts=TS))
    data = one(chat.services, Conversion).custom_data
    assert data["value"] == 1000.5
    assert data["num_items"] == 4
    assert data["currency"] == "USD"
    assert [c["id"] for c in data["contents"]] == ["a", "b", "c"]


def test_an_order_of_mixed_currencies_is_refused_with_a_notice(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.order([_item(1, 5), _item(1, 5, "x", "EUR")], ts=TS))
    assert chat.conversions() == []
    notice = one(chat.services, WebhookNotice, WebhookNotice.kind == "rule_refused")
    assert "cart-sent" in notice.message
    assert "currency" in notice.message
    assert {d.status for d in rows(chat.services, WebhookDelivery)} == {WebhookDelivery.PROCESSED}


@pytest.mark.parametrize(
    "raw_price",
    [b'"1e999999999"', b"1e999999999", b'"9' + b"9" * 40 + b'"', b"1" + b"0" * 5000],
    ids=["string", "json-number", "41-digits", "5001-digit-integer"],
)
def test_an_unrepresentable_price_is_a_notice_and_the_rest_of_the_delivery_is_processed(
    chat: Chat, raw_price: bytes
) -> None:
    _clicked(chat)
    payload = p.delivery(
        p.order([_item(2, 12345, "big")], ts=TS),
        p.text("what is the price?", ts=TS + 1, id="wamid.after"),
    )
    # Written into the body by hand: no JSON encoder writes a number Python cannot hold.
    body = encode(payload).replace(b"12345", raw_price, 1)
    r = chat.client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200, r.data
    notice = one(chat.services, WebhookNotice, WebhookNotice.kind == "rule_refused")
    assert "item_price" in notice.message
    assert [c.rule_name for c in chat.conversions()] == ["asked-for-price"]
    assert {d.status for d in rows(chat.services, WebhookDelivery)} == {WebhookDelivery.PROCESSED}


def test_order_rules_do_not_see_text_messages(chat: Chat) -> None:
    _clicked(chat)
    chat.send(p.order([_item(1, 5)], note="what's the price of shipping?", ts=TS))
    # The order fires cart-sent; its note is not a message for asked-for-price.
    assert [c.rule_name for c in chat.conversions()] == ["cart-sent"]


# --- on = "automatic_event" -------------------------------------------------------------------


def test_automatic_purchase_is_forwarded_with_its_value_unscaled(
    chat_with: Callable[[str], Chat],
) -> None:
    chat = chat_with(AUTOMATIC_PURCHASE)
    _clicked(chat)
    event = p.automatic_event("Purchase", ts=TS, custom_data={"currency": "usd", "value": 25000})
    chat.post(p.envelope(p.automatic_events_change([event])))
    conversion = one(chat.services, Conversion)
    assert conversion.event_name == "Purchase"
    assert conversion.custom_data == {"currency": "USD", "value": 25.0}
    assert conversion.extra == {"messaging_outcome_data": {"outcome_type": "automatic_events"}}
    assert conversion.event_time == from_unix(TS)
    assert conversion.ctwa_clid == p.CLICK_ID
    assert conversion.conversation_id == one(chat.services, Conversation).id
    assert conversion.rule_name == "meta-purchase"


def test_automatic_events_need_a_rule_and_a_match(chat: Chat) -> None:
    # CONTRACT_RULES has no automatic_event rule: Meta's events are recorded, not forwarded.
    _clicked(chat)
    event = p.automatic_event("Purchase", ts=TS, custom_data={"currency": "USD", "value": 1000})
    chat.post(p.envelope(p.automatic_events_change([event])))
    assert chat.conversions() == []


def test_automatic_lead_does_not_match_a_purchase_rule(chat_with: Callable[[str], Chat]) -> None:
    chat = chat_with(AUTOMATIC_PURCHASE)
    _clicked(chat)
    chat.post(p.envelope(p.automatic_events_change([p.automatic_event("LeadSubmitted", ts=TS)])))
    assert chat.conversions() == []


# --- redelivery and old messages --------------------------------------------------------------


def test_a_redelivered_message_fires_nothing_new(chat_with: Callable[[str], Chat]) -> None:
    chat = chat_with(EVERY_PRICE_QUESTION)
    _clicked(chat)
    msg = p.text("price?", ts=TS)
    chat.send(msg)
    first = one(chat.services, Conversion)
    # The same bytes again, then the same message in another delivery (other bytes).
    assert chat.send(msg).json["status"] == "duplicate"
    assert chat.post(p.delivery(msg, p.text("unrelated", ts=TS + 5))).json["status"] == "stored"
    assert one(chat.services, Conversion).event_id == first.event_id


def test_a_redelivery_with_other_sender_ids_creates_no_conversation(chat: Chat) -> None:
    # The same message id again, its sender now given by BSUID only (bytes differ, so the
    # webhook stores it as a new delivery): no second conversation, no second click.
    first = p.message(ts=TS, ref=p.referral(), text={"body": "hi"})
    chat.send(first)
    again = {k: v for k, v in first.items() if k != "from"} | {"from_user_id": "US.777"}
    chat.send(again, contacts=[{"user_id": "US.777", "profile": {"name": "Kerry"}}])
    assert count(chat.services, Conversation) == 1


def test_a_message_older_than_7_days_records_an_expired_conversion(chat: Chat) -> None:
    _clicked(chat, ts=TS - 9 * 24 * 3600)
    # Redelivered after an outage: the customer asked 8 days ago.
    old = TS - 8 * 24 * 3600
    chat.send(p.text("price?", ts=old))
    conversion = one(chat.services, Conversion)
    assert conversion.status == Conversion.EXPIRED
    assert conversion.event_time == from_unix(old)
    assert "more than 7 days old" in (conversion.last_error or "")
    assert "Meta refuses" in (conversion.last_error or "")
    assert {d.status for d in rows(chat.services, WebhookDelivery)} == {WebhookDelivery.PROCESSED}
    assert count(chat.services, WebhookNotice, WebhookNotice.kind == "rule_refused") == 0


def test_a_rules_file_without_rules_fires_nothing(chat_with: Callable[[str], Chat]) -> None:
    chat = chat_with("# nothing yet\n")
    _clicked(chat)
    chat.send(p.text("price?", ts=TS))
    chat.send(p.order([_item(3, 7.99)], ts=TS + 1))
    assert chat.conversions() == []
