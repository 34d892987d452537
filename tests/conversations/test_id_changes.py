"""Users whose ids change (issue #14): each of Meta's three signals, both orders of arrival,
merges, contradictions; group messages, echoes and user actions. End to end: signed
deliveries in, the store and the admin API read back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401 - its C extension must load before freezegun swaps datetime
import pytest
from flask import Flask
from freezegun import freeze_time
from sqlalchemy import event

from tests import payloads as p
from tests.conftest import ADMIN_TOKEN, WABA_ID, encode, signed_headers
from tests.webhooks.helpers import count, one, rows
from waconv.clock import from_unix
from waconv.models import (
    Click,
    Conversation,
    Conversion,
    CustomerIdentifier,
    Message,
    UserAlias,
    WebhookDelivery,
    WebhookNotice,
)
from waconv.retention import prune
from waconv.services import Services

TS = 1750275992
NOW = from_unix(TS) + timedelta(hours=1)
OLD = "US.13491208655302741918"  # the user's business-scoped id before the change
NEW = "US.99000000000000000001"  # ... and after
OTHER = "US.55500000000000000077"  # another user
PARENT = "US.ENT.11112222333344445555"
PHONE = "16505551234"

RULES = r"""
[[rules]]
name = "asked-for-price"
on = "message"
match = "(?i)\\b(price|how much)\\b"
event = "LeadSubmitted"
"""


class Chat:
    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()
        self.services: Services = app.extensions["waconv"]
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def post(self, payload: dict[str, Any]) -> Any:
        body = encode(payload)
        r = self.client.post("/webhook", data=body, headers=signed_headers(body))
        assert r.status_code == 200, r.data
        return r

    def conversation(self, user: str) -> Any:
        return self.client.get(f"/admin/conversations/{user}", headers=self.admin)

    def mark(self, **body: Any) -> Any:
        return self.client.post("/admin/conversions", json=body, headers=self.admin)


@pytest.fixture
def chat(rules_path: Path, make_app: Callable[..., Flask]) -> Iterator[Chat]:
    rules_path.write_text(RULES)
    with freeze_time(NOW):
        yield Chat(make_app())


def from_user(
    user_id: str | None, body: str = "Hello!", *, wa_id: str | None = None, **kw: Any
) -> dict[str, Any]:
    """A delivery of one text from a user whose number is withheld (unless ``wa_id``)."""
    extra = {"from_user_id": user_id} if user_id else {}
    msg = p.message("text", wa_id=wa_id, text={"body": body}, **extra, **kw)
    contact = p.contact(wa_id, **({"user_id": user_id} if user_id else {}))
    return p.delivery(msg, contacts=[contact])


def clicked(chat: Chat, user_id: str = OLD, **kw: Any) -> None:
    chat.post(from_user(user_id, ts=TS - 60, ref=p.referral(), **kw))


def system(
    kind: str, system: dict[str, Any], *, sender: str | None = None, **msg: Any
) -> dict[str, Any]:
    """A system message as Meta documents it: no contacts array."""
    body = {"type": kind, **system}
    extra = {"from_user_id": sender} if sender else {}
    message = p.message("system", wa_id=msg.pop("wa_id", None), system=body, **extra, **msg)
    change = p.change(messages=[message], contacts=[])
    del change["value"]["contacts"]
    return p.envelope(change)


def changed_user_id(**kw: Any) -> dict[str, Any]:
    return system(
        "user_changed_user_id",
        {
            "body": f"User Sheena Nelson changed from {OLD} to {NEW}",
            "user_id": NEW,
            "parent_user_id": PARENT,
        },
        ts=TS,
        **kw,
    )


def user_id_update(
    previous: str = OLD, current: str = NEW, *, wa_id: str | None = None, metadata: bool = True
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "user_id": {"previous": previous, "current": current},
        "parent_user_id": {"previous": None, "current": PARENT},
        "timestamp": str(TS),
    }
    if wa_id:
        item["wa_id"] = wa_id
    value: dict[str, Any] = {"messaging_product": "whatsapp", "user_id_update": [item]}
    if metadata:
        value["metadata"] = {
            "display_phone_number": "15550783881",
            "phone_number_id": "106540352242922",
        }
    return p.envelope({"field": "user_id_update", "value": value})


def assert_followed(chat: Chat) -> None:
    """One conversation; the follow-up from the new id fired the rule under the first click."""
    conversation = one(chat.services, Conversation)
    assert conversation.user_id == NEW
    assert conversation.ctwa_clid == p.CLICK_ID
    conversion = one(chat.services, Conversion)
    assert conversion.rule_name == "asked-for-price"
    assert conversion.ctwa_clid == p.CLICK_ID
    assert conversion.conversation_id == conversation.id
    for user in (OLD, NEW):
        r = chat.conversation(user)
        assert r.status_code == 200
        assert r.json["user_id"] == NEW
        assert r.json["previous_ids"] == [OLD]
        assert r.json["ctwa_clid"] == p.CLICK_ID


# --- the three signals, change first ---------------------------------------------------------


@pytest.mark.parametrize(
    "previous_in",
    ["system.previous_user_id", "message.previous_user_id", "sender", "body"],
)
def test_user_changed_user_id_then_a_follow_up_from_the_new_id(chat: Chat, previous_in: str):
    clicked(chat)
    if previous_in == "system.previous_user_id":
        change = changed_user_id()
        change["entry"][0]["changes"][0]["value"]["messages"][0]["system"]["previous_user_id"] = OLD
    elif previous_in == "message.previous_user_id":
        change = changed_user_id(previous_user_id=OLD)
    elif previous_in == "sender":
        change = changed_user_id(sender=OLD)
    else:
        change = changed_user_id()  # only the body says "changed from OLD to NEW"
    chat.post(change)
    chat.post(from_user(NEW, "How much is it?", ts=TS + 60))
    assert_followed(chat)
    assert one(chat.services, Conversation).parent_user_id == PARENT
    assert chat.conversation(NEW).json["parent_user_id"] == PARENT
    assert count(chat.services, WebhookNotice) == 0
    system_message = one(chat.services, Message, Message.type == "system")
    assert system_message.conversation_id == one(chat.services, Conversation).id


def test_user_id_update_then_a_follow_up(chat: Chat):
    clicked(chat)
    chat.post(user_id_update(metadata=False))  # a WABA-level change: no phone number
    chat.post(from_user(NEW, "How much is it?", ts=TS + 60))
    assert_followed(chat)
    assert one(chat.services, Conversation).parent_user_id == PARENT


def test_user_changed_number_with_the_new_business_scoped_id(chat: Chat):
    new_phone = "16505550000"
    clicked(chat, OLD, wa_id=PHONE)
    change = p.changed_number(PHONE, new_phone, ts=TS, from_user_id=OLD)
    change["system"]["user_id"] = NEW
    chat.post(p.delivery(change, contacts=[p.contact(PHONE, user_id=OLD)]))
    chat.post(from_user(NEW, "How much is it?", wa_id=new_phone, ts=TS + 60))
    conversation = one(chat.services, Conversation)
    assert (conversation.wa_id, conversation.user_id) == (new_phone, NEW)
    assert one(chat.services, Conversion).ctwa_clid == p.CLICK_ID
    r = chat.conversation(PHONE)
    assert r.status_code == 200
    assert sorted(r.json["previous_ids"]) == sorted([PHONE, OLD])


# --- the change after messages from the new id ------------------------------------------------


@pytest.mark.parametrize("signal", ["user_changed_user_id", "user_id_update"])
def test_change_after_the_new_id_wrote_merges_and_fires_once(chat: Chat, signal: str):
    clicked(chat)
    chat.post(from_user(NEW, "How much is it?", ts=TS))
    assert count(chat.services, Conversation) == 2
    assert count(chat.services, Conversion) == 0  # no click on the new id's conversation
    assert chat.mark(user_id=NEW, event_name="QualifiedLead").status_code == 422

    change = changed_user_id(previous_user_id=OLD) if signal != "user_id_update" else None
    chat.post(change or user_id_update())
    assert_followed(chat)
    assert count(chat.services, Message, Message.type == "text") == 2
    assert [c.message_wamid for c in rows(chat.services, Click)] != []

    # A redelivered change, or a later message, sends nothing twice.
    chat.post(from_user(NEW, "How much is it, again?", ts=TS + 120))
    assert count(chat.services, Conversion) == 1
    r = chat.mark(user_id=OLD, event_name="Purchase", custom_data={"value": 9, "currency": "USD"})
    assert r.status_code == 202
    again = chat.mark(
        user_id=NEW, event_name="Purchase", custom_data={"value": 9, "currency": "USD"}
    )
    assert again.status_code == 200
    assert again.json["id"] == r.json["id"]


def test_both_conversations_with_clicks_merge_keeping_the_click_history(chat: Chat):
    later_click = "Aff-LATER-CLICK"
    clicked(chat)
    chat.post(from_user(OLD, "How much is it?", ts=TS))
    chat.post(from_user(NEW, "Hi again", ts=TS + 300, ref=p.referral(ctwa_clid=later_click)))
    chat.post(from_user(NEW, "price?", ts=TS + 400))
    assert count(chat.services, Conversion) == 2
    chat.post(changed_user_id(previous_user_id=OLD))
    conversation = one(chat.services, Conversation)
    assert conversation.ctwa_clid == later_click  # the latest click
    clicks = rows(chat.services, Click)
    assert [c.ctwa_clid for c in sorted(clicks, key=lambda c: c.clicked_at)] == [
        p.CLICK_ID,
        later_click,
    ]
    assert all(c.conversation_id == conversation.id for c in clicks)
    conversions = rows(chat.services, Conversion)
    assert len(conversions) == 2  # nothing fired again by the merge
    assert {c.conversation_id for c in conversions} == {conversation.id}


# --- ids never seen, contradictions -----------------------------------------------------------


def test_a_change_naming_unseen_ids_applies_when_they_appear(chat: Chat):
    chat.post(user_id_update(metadata=False))
    assert count(chat.services, Conversation) == 0
    assert one(chat.services, UserAlias).current == NEW
    clicked(chat, OLD)  # Meta's order: the click from the old id is processed after
    chat.post(from_user(NEW, "How much is it?", ts=TS + 60))
    assert_followed(chat)


def test_the_same_new_id_claimed_by_two_users_is_a_notice(chat: Chat):
    clicked(chat, OLD)
    chat.post(from_user(OTHER, "hi", wa_id="16505559999", ts=TS))
    chat.post(user_id_update(OLD, NEW))
    chat.post(user_id_update(OTHER, NEW))
    notice = one(chat.services, WebhookNotice)
    assert notice.kind == "identity_conflict"
    assert NEW in notice.message
    assert sorted(c.user_id for c in rows(chat.services, Conversation)) == sorted([NEW, OTHER])
    assert chat.conversation(OTHER).json["previous_ids"] == []


def test_two_numbers_claiming_one_new_id_change_nothing(chat: Chat):
    clicked(chat, OLD, wa_id=PHONE)
    chat.post(from_user(NEW, "hi", wa_id="16505559999", ts=TS))
    chat.post(user_id_update(OLD, NEW))
    assert one(chat.services, WebhookNotice).kind == "identity_conflict"
    assert count(chat.services, Conversation) == 2
    assert count(chat.services, UserAlias) == 0


def test_retention_keeps_the_id_links_and_drops_the_texts(chat: Chat):
    clicked(chat)
    chat.post(changed_user_id(previous_user_id=OLD))
    with freeze_time(NOW + timedelta(days=40)):
        prune(chat.services, days=30)
    assert one(chat.services, UserAlias).previous == OLD
    assert all(m.text is None and m.payload is None for m in rows(chat.services, Message))
    assert chat.conversation(OLD).json["user_id"] == NEW


# --- groups, echoes, user actions ---------------------------------------------------------


def test_a_group_message_is_stored_and_neither_fires_nor_credits(chat: Chat):
    clicked(chat, OLD)
    other_click = "Aff-GROUP-CLICK"
    chat.post(
        from_user(
            OLD,
            "How much is it?",
            ts=TS + 60,
            group_id="120363025246125486@g.us",
            ref=p.referral(ctwa_clid=other_click),
        )
    )
    stored = one(chat.services, Message, Message.origin == Message.GROUP)
    assert stored.group_id == "120363025246125486@g.us"
    conversation = one(chat.services, Conversation)
    assert conversation.ctwa_clid == p.CLICK_ID
    assert conversation.last_message_at == from_unix(TS + 60)
    assert count(chat.services, Click) == 1
    assert count(chat.services, Conversion) == 0


@pytest.mark.parametrize("field", ["message_echoes", "smb_message_echoes"])
def test_an_echo_is_the_business_speaking_and_fires_nothing(chat: Chat, field: str):
    clicked(chat, None, wa_id=PHONE)
    echo = {
        "from": "15550783881",
        "to": PHONE,
        "id": p.wamid(),
        "timestamp": str(TS + 30),
        "type": "text",
        "text": {"body": "The price is 20 USD"},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "message_echoes": [echo],
    }
    chat.post(p.envelope({"field": field, "value": value}))
    stored = one(chat.services, Message, Message.origin == Message.ECHO)
    assert stored.text == "The price is 20 USD"
    assert stored.conversation_id == one(chat.services, Conversation).id
    assert count(chat.services, Conversion) == 0
    assert count(chat.services, WebhookNotice) == 0


def test_user_actions_are_stored(chat: Chat):
    clicked(chat, None, wa_id=PHONE)
    action = {
        "action_type": "marketing_messages_link_click",
        "timestamp": str(TS + 30),
        "marketing_messages_link_click_data": {
            "click_component": "cta",
            "product_id": "sku_1",
            "click_id": "click-1",
            "tracking_token": "token-1",
        },
    }
    change = p.change(contacts=[p.contact(PHONE)])
    change["value"].update(user_actions=[action], contacts=[p.contact(PHONE)])
    chat.post(p.envelope(change))
    change["value"]["statuses"] = []  # the same action again, in other bytes: stored once
    chat.post(p.envelope(change))
    assert count(chat.services, WebhookDelivery) == 3
    stored = one(chat.services, Message, Message.origin == Message.USER_ACTION)
    assert stored.type == "marketing_messages_link_click"
    assert stored.payload == action
    assert stored.conversation_id == one(chat.services, Conversation).id
    assert count(chat.services, Conversion) == 0


def test_parent_user_id_from_contacts(chat: Chat):
    delivery = from_user(OLD, "hi", ts=TS)
    delivery["entry"][0]["changes"][0]["value"]["contacts"][0]["parent_user_id"] = PARENT
    chat.post(delivery)
    assert chat.conversation(OLD).json["parent_user_id"] == PARENT
    assert one(chat.services, Conversation).waba_id == WABA_ID


def test_a_plain_ctwa_delivery_looks_up_aliases_in_its_one_conversation_query(chat: Chat):
    """The hot path: earlier ids cost no statement of their own (issue #14's benchmark)."""
    selects: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(chat.services.db.engine, "before_cursor_execute", seen)
    try:
        clicked(chat, OLD)
        chat.post(from_user(OLD, "How much is it?", ts=TS))
    finally:
        event.remove(chat.services.db.engine, "before_cursor_execute", seen)
    lookups = [s for s in selects if "user_aliases" in s]
    assert len(lookups) == 2  # one conversation lookup per message, aliases inside it
    assert all("FROM conversations" in s.split("user_aliases")[0] for s in lookups)
    assert count(chat.services, Conversion) == 1


def test_a_merge_keeps_each_customer_digest_once(chat: Chat):
    """Both conversations held the same hashed email (a connector named it for each): the
    merge moves the other's digests and keeps the shared one once."""
    from waconv.customers.store import remember

    clicked(chat)
    chat.post(from_user(NEW, "Hi again", ts=TS + 300))
    with chat.services.db.transaction() as session:
        old, new = sorted(session.query(Conversation).all(), key=lambda c: c.id)
        remember(session, old.id, [("em", "a" * 64)])
        remember(session, new.id, [("em", "a" * 64), ("fn", "b" * 64)])
    chat.post(changed_user_id(previous_user_id=OLD))
    survivor = one(chat.services, Conversation)
    digests = rows(chat.services, CustomerIdentifier)
    assert sorted((d.field, d.conversation_id) for d in digests) == [
        ("em", survivor.id),
        ("fn", survivor.id),
    ]
