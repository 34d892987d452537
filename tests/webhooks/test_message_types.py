"""One test per message type, built from the shapes of Meta's reference (meta-api.md §2)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import payloads as p
from tests.webhooks.helpers import count, one, rows
from waconv.models import Conversation, Message, WebhookDelivery, WebhookNotice


def _post_one(post_webhook, services, msg: dict[str, Any]) -> Message:
    r = post_webhook(p.delivery(msg))
    assert r.status_code == 200, r.data
    assert r.json["status"] == "stored"
    assert one(services, WebhookDelivery).status == WebhookDelivery.PROCESSED
    stored = one(services, Message)
    assert stored.wamid == msg["id"]
    assert stored.payload == msg  # kept as Meta sent it
    conversation = one(services, Conversation)
    assert stored.conversation_id == conversation.id
    assert conversation.wa_id == "16505551234"
    # Once: the same message again, inside another body, adds nothing.
    again = p.envelope(p.change(messages=[msg]), p.change(statuses=[p.status("w.X", "read")]))
    assert post_webhook(again).json["status"] == "stored"
    assert count(services, WebhookDelivery) == 2
    assert count(services, Message) == 1
    return stored


CASES = [
    ("text", lambda: p.text("Can I get more info about this?"), "Can I get more info about this?"),
    ("interactive", lambda: p.button_reply("Cancel", "cancel-button"), "Cancel"),
    ("interactive", lambda: p.list_reply("Priority Mail Express"), "Priority Mail Express"),
    ("button", lambda: p.button("Unsubscribe"), "Unsubscribe"),
    (
        "order",
        lambda: p.order(
            [
                {
                    "product_retailer_id": "di9ozbzfi4",
                    "quantity": 2,
                    "item_price": 7.99,
                    "currency": "USD",
                }
            ]
        ),
        "Love these!",
    ),
    ("image", lambda: p.media("image", caption="this one"), "this one"),
    ("image", lambda: p.media("image"), None),
    ("audio", lambda: p.media("audio"), None),
    ("video", lambda: p.media("video", caption="look"), "look"),
    ("document", lambda: p.media("document", caption="the menu"), "the menu"),
    ("sticker", lambda: p.media("sticker"), None),
    ("location", p.location, None),
    ("contacts", p.contacts_message, None),
    ("reaction", p.reaction, None),
    ("request_welcome", p.request_welcome, None),
]


@pytest.mark.parametrize(
    ("kind", "build", "text"),
    CASES,
    ids=[
        "text",
        "button_reply",
        "list_reply",
        "button",
        "order",
        "image-caption",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "reaction",
        "request_welcome",
    ],
)
def test_documented_message_type_is_stored_once_with_its_text(
    post_webhook, services, kind, build, text
):
    msg = build()
    stored = _post_one(post_webhook, services, msg)
    assert stored.type == kind
    assert stored.text == text
    assert stored.timestamp.isoformat() == "2025-06-18T19:46:32+00:00"  # "1750275992"
    assert count(services, WebhookNotice) == 0  # a documented type is nothing to report


def test_location_values_are_kept_in_the_payload(post_webhook, services):
    stored = _post_one(post_webhook, services, p.location())
    assert stored.payload["location"]["latitude"] == pytest.approx(37.483307)


def test_reaction_with_emoji_is_kept(post_webhook, services):
    stored = _post_one(post_webhook, services, p.reaction(emoji="\u2764\ufe0f"))
    assert stored.payload["reaction"]["emoji"] == "\u2764\ufe0f"


def test_unsupported_message_is_stored_and_kept_as_a_notice(post_webhook, services):
    stored = _post_one(post_webhook, services, p.unsupported(131051))
    assert stored.type == "unsupported"
    assert stored.text is None
    notice = one(services, WebhookNotice)
    assert notice.kind == "unsupported_message"
    assert notice.code == 131051
    assert notice.title == "Message type unknown"
    assert notice.payload["id"] == stored.wamid


def test_unknown_future_type_is_stored_and_kept_as_a_notice(post_webhook, services):
    msg = p.message("poll_vote", poll_vote={"poll_id": "wamid.POLL", "options": [1, 3]})
    stored = _post_one(post_webhook, services, msg)
    assert stored.type == "poll_vote"
    notice = one(services, WebhookNotice)
    assert notice.kind == "unsupported_message"
    assert "poll_vote" in notice.message
    assert notice.payload == msg


def test_message_without_type_is_kept(post_webhook, services):
    msg = p.message("text")
    del msg["type"]
    stored = _post_one(post_webhook, services, msg)
    assert stored.type == "unknown"
    assert one(services, WebhookNotice).kind == "unsupported_message"


def test_user_changed_number_moves_the_conversation_to_the_new_wa_id(
    post_webhook, client, services, admin_headers
):
    old, new = "16505551234", "16505550000"
    assert post_webhook(p.delivery(p.text("hi", wa_id=old, ref=p.referral()))).status_code == 200
    system = p.changed_number(old, new, ts=1750276000)
    r = post_webhook(p.delivery(system, contacts=[p.contact(old)]))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    assert [m.type for m in rows(services, Message)] == ["text", "system"]
    conversation = one(services, Conversation)
    assert conversation.wa_id == new
    assert conversation.ctwa_clid == p.CLICK_ID  # the click stays with the person

    # The next message from the new number joins the same conversation.
    again = p.delivery(p.text("again", wa_id=new), contacts=[p.contact(new)])
    assert post_webhook(again).status_code == 200
    assert count(services, Conversation) == 1
    assert count(services, Message) == 3
    # Any id the user has had finds them (0.4: the old number no longer answers 404).
    for user in (old, new):
        r = client.get(f"/admin/conversations/{user}", headers=admin_headers)
        assert r.status_code == 200
        assert r.json["wa_id"] == new
        assert r.json["previous_ids"] == [old]
        assert r.json["ctwa_clid"] == p.CLICK_ID


def test_changed_number_to_a_number_that_already_talks_merges_them(post_webhook, services):
    # Meta does not promise order: the new number wrote before the change arrived.
    old, new = "16505551234", "16505550000"
    post_webhook(p.delivery(p.text("a", wa_id=old, ref=p.referral()), contacts=[p.contact(old)]))
    post_webhook(p.delivery(p.text("b", wa_id=new), contacts=[p.contact(new)]))
    r = post_webhook(p.delivery(p.changed_number(old, new), contacts=[p.contact(old)]))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    conversation = one(services, Conversation)
    assert conversation.wa_id == new
    assert conversation.ctwa_clid == p.CLICK_ID
    assert count(services, Message) == 3
    assert count(services, WebhookNotice) == 0
