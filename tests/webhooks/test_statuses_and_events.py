"""statuses, errors, automatic_events, unknown fields, batches (meta-api.md §1.3, §1.6, §2.7)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests import payloads as p
from tests.conftest import PHONE_NUMBER_ID, WABA_ID
from tests.webhooks.helpers import count, one, rows
from waconv.models import (
    Account,
    AutomaticEvent,
    Conversation,
    Message,
    MessageStatus,
    WebhookDelivery,
    WebhookNotice,
)

SENT_WAMID = "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"


def test_statuses_are_stored_with_errors_and_pricing(post_webhook, services):
    failure = p.error(131049, "This message was not delivered to maintain healthy ecosystem")
    statuses = [
        p.status(SENT_WAMID, "sent", ts=1750276000, pricing=True),
        p.status(SENT_WAMID, "delivered", ts=1750276001),
        p.status(SENT_WAMID, "read", ts=1750276002),
        p.status("wamid.FAILED", "failed", ts=1750276003, errors=[failure]),
    ]
    r = post_webhook(p.envelope(p.change(statuses=statuses)))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    stored = rows(services, MessageStatus)
    assert [(s.wamid, s.status) for s in stored] == [
        (SENT_WAMID, "sent"),
        (SENT_WAMID, "delivered"),
        (SENT_WAMID, "read"),
        ("wamid.FAILED", "failed"),
    ]
    sent, _, read, failed = stored
    assert sent.payload["pricing"]["category"] == "referral_conversion"
    assert sent.timestamp == datetime(2025, 6, 18, 19, 46, 40, tzinfo=UTC)
    assert read.timestamp == datetime(2025, 6, 18, 19, 46, 42, tzinfo=UTC)
    assert {s.waba_id for s in stored} == {WABA_ID}
    assert {s.phone_number_id for s in stored} == {PHONE_NUMBER_ID}
    assert {s.recipient_id for s in stored} == {"16505551234"}
    assert failed.errors == [failure]
    assert sent.errors is None
    assert one(services, WebhookDelivery).items == 4
    assert count(services, Message) == 0


def test_status_is_deduplicated_on_id_and_status(post_webhook, services):
    first = p.envelope(p.change(statuses=[p.status(SENT_WAMID, "sent")]))
    again = p.envelope(
        p.change(statuses=[p.status(SENT_WAMID, "sent"), p.status(SENT_WAMID, "delivered")])
    )
    assert post_webhook(first).status_code == 200
    r = post_webhook(again)
    assert r.status_code == 200
    assert r.json["status"] == "stored"  # another body: stored, but the known status is skipped
    assert count(services, WebhookDelivery) == 2
    assert sorted(s.status for s in rows(services, MessageStatus)) == ["delivered", "sent"]


def test_status_without_id_is_a_notice_and_the_rest_goes_on(post_webhook, services):
    statuses = [{"status": "sent", "timestamp": "1750276000"}, p.status(SENT_WAMID, "read")]
    r = post_webhook(p.envelope(p.change(statuses=statuses)))
    assert r.status_code == 200
    assert one(services, MessageStatus).status == "read"
    assert one(services, WebhookNotice).kind == "malformed"


def test_value_errors_are_notices_with_code_and_title(post_webhook, services):
    errors = [p.error(130429, "Rate limit hit"), p.error(131000, "Something went wrong")]
    r = post_webhook(p.envelope(p.change(errors=errors)))
    assert r.status_code == 200
    notices = rows(services, WebhookNotice)
    assert [(n.kind, n.code, n.title) for n in notices] == [
        ("error", 130429, "Rate limit hit"),
        ("error", 131000, "Something went wrong"),
    ]
    assert notices[0].waba_id == WABA_ID
    assert notices[0].field == "messages"
    assert notices[0].payload == errors[0]


def test_automatic_events_are_stored_with_their_integer_timestamp(post_webhook, services):
    post_webhook(p.delivery(p.text("hi", ref=p.referral())))
    purchase = p.automatic_event(
        "Purchase", ts=1739321024, custom_data={"currency": "USD", "value": 25000}
    )
    lead = p.automatic_event("LeadSubmitted", ts=1739321100, ctwa_clid=None)
    r = post_webhook(p.envelope(p.automatic_events_change([purchase, lead])))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    stored = rows(services, AutomaticEvent)
    assert [(e.wamid, e.event_name) for e in stored] == [
        (purchase["id"], "Purchase"),
        (lead["id"], "LeadSubmitted"),
    ]
    assert stored[0].timestamp == datetime(2025, 2, 12, 0, 43, 44, tzinfo=UTC)
    assert stored[0].ctwa_clid == p.CLICK_ID
    assert stored[0].conversation_id == one(services, Conversation).id  # found by its click
    assert stored[0].payload["custom_data"] == {"currency": "USD", "value": 25000}
    assert stored[1].ctwa_clid is None  # Status-ad placements carry no click id
    assert stored[0].phone_number_id == PHONE_NUMBER_ID
    # Redelivered inside another body: nothing new.
    r = post_webhook(p.envelope(p.automatic_events_change([purchase]), p.change(statuses=[])))
    assert r.status_code == 200
    assert count(services, AutomaticEvent) == 2


def test_automatic_event_without_timestamp_is_a_notice(post_webhook, services):
    event = p.automatic_event()
    del event["timestamp"]
    r = post_webhook(p.envelope(p.automatic_events_change([event])))
    assert r.status_code == 200
    assert count(services, AutomaticEvent) == 0
    assert one(services, WebhookNotice).kind == "malformed"


def test_unknown_field_is_kept_as_a_notice(post_webhook, services):
    change = p.account_update_change()
    r = post_webhook(p.envelope(change))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    notice = one(services, WebhookNotice)
    assert notice.kind == "unknown_field"
    assert notice.field == "account_update"
    assert notice.payload == change["value"]


def test_multi_entry_multi_change_batch_processes_every_item(post_webhook, services):
    other_waba, other_number = "104996122399160", "108427883974416"
    first = p.envelope(
        p.change(
            messages=[
                p.text("one", wa_id="16505550001", ref=p.referral()),
                p.text("two", wa_id="16505550002"),
            ],
            contacts=[p.contact("16505550001"), p.contact("16505550002")],
        ),
        p.change(statuses=[p.status(SENT_WAMID, "sent"), p.status(SENT_WAMID, "read")]),
        p.change(errors=[p.error()]),
    )
    second = p.envelope(
        p.change(
            messages=[p.media("image", wa_id="16505550003"), p.location(wa_id="16505550001")],
            contacts=[p.contact("16505550003"), p.contact("16505550001")],
            phone_number_id=other_number,
        ),
        p.automatic_events_change([p.automatic_event()], phone_number_id=other_number),
        p.account_update_change(),
        waba_id=other_waba,
    )
    batch = {"object": "whatsapp_business_account", "entry": first["entry"] + second["entry"]}
    r = post_webhook(batch)
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    assert one(services, WebhookDelivery).items == 9  # 4 messages, 2 statuses, 3 others
    assert sorted(a.waba_id for a in rows(services, Account)) == sorted([WABA_ID, other_waba])
    assert {a.status for a in rows(services, Account)} == {Account.ACTIVE}
    assert count(services, Message) == 4
    assert count(services, MessageStatus) == 2
    assert count(services, AutomaticEvent) == 1
    assert sorted(n.kind for n in rows(services, WebhookNotice)) == ["error", "unknown_field"]
    conversations = {(c.waba_id, c.phone_number_id, c.wa_id) for c in rows(services, Conversation)}
    assert conversations == {
        (WABA_ID, PHONE_NUMBER_ID, "16505550001"),
        (WABA_ID, PHONE_NUMBER_ID, "16505550002"),
        (other_waba, other_number, "16505550003"),
        (other_waba, other_number, "16505550001"),
    }
    # The same user on the second number has no click: clicks are per conversation.
    clicked = rows(services, Conversation, Conversation.ctwa_clid.is_not(None))
    assert [(c.phone_number_id, c.wa_id) for c in clicked] == [(PHONE_NUMBER_ID, "16505550001")]


def test_entry_without_waba_id_is_a_notice_and_other_entries_go_on(post_webhook, services):
    good = p.delivery(p.text("fine"))
    batch = {"object": "whatsapp_business_account", "entry": [{"changes": []}, *good["entry"]]}
    r = post_webhook(batch)
    assert r.status_code == 200
    assert one(services, Message).text == "fine"
    assert one(services, WebhookNotice).kind == "malformed"
