"""Who the user is: wa_id, the business-scoped user_id (BSUID), or both (meta-api.md §1.7)."""

from __future__ import annotations

from tests import payloads as p
from tests.conftest import PHONE_NUMBER_ID, WABA_ID
from tests.webhooks.helpers import count, one
from waconv.models import Conversation, Message

BSUID = p.USER_ID
WA_ID = "16505551234"
OTHER_NUMBER = "108427883974416"


def _bsuid_only(msg_kw=None, **change_kw):
    msg = p.text("hola", wa_id=None, **(msg_kw or {}))
    contact = p.contact(wa_id=None, user_id=BSUID)
    contact["profile"]["username"] = "sheena"
    return p.delivery(msg, contacts=[contact], **change_kw)


def test_bsuid_only_user_is_first_class(post_webhook, client, services, admin_headers):
    r = post_webhook(_bsuid_only({"ref": p.referral()}))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    conversation = one(services, Conversation)
    assert (conversation.wa_id, conversation.user_id) == (None, BSUID)
    assert one(services, Message).conversation_id == conversation.id

    r = client.get(f"/admin/conversations/{BSUID}", headers=admin_headers)
    assert r.status_code == 200
    assert r.json["wa_id"] is None
    assert r.json["user_id"] == BSUID
    assert r.json["username"] == "sheena"
    assert r.json["waba_id"] == WABA_ID
    assert r.json["phone_number_id"] == PHONE_NUMBER_ID
    assert r.json["ctwa_clid"] == p.CLICK_ID
    assert r.json["first_message_at"] == "2025-06-18T19:46:32Z"


def test_bsuid_from_message_field_without_contacts(post_webhook, services):
    msg = p.text("hola", wa_id=None, from_user_id=BSUID)
    r = post_webhook(p.delivery(msg, contacts=[]))
    assert r.status_code == 200
    assert one(services, Conversation).user_id == BSUID


def test_later_message_with_both_ids_joins_the_same_conversation(
    post_webhook, client, services, admin_headers
):
    post_webhook(_bsuid_only({"ref": p.referral()}))
    both = p.text("again", wa_id=WA_ID, ts=1750276100)
    post_webhook(p.delivery(both, contacts=[p.contact(WA_ID, user_id=BSUID)]))
    assert count(services, Conversation) == 1
    assert count(services, Message) == 2
    conversation = one(services, Conversation)
    assert (conversation.wa_id, conversation.user_id) == (WA_ID, BSUID)
    for user in (WA_ID, BSUID):
        r = client.get(f"/admin/conversations/{user}", headers=admin_headers)
        assert r.status_code == 200
        assert r.json["ctwa_clid"] == p.CLICK_ID
        assert r.json["last_message_at"] == "2025-06-18T19:48:20Z"


def test_phone_user_who_later_shows_a_bsuid_keeps_the_conversation(post_webhook, services):
    post_webhook(p.delivery(p.text("hi", ref=p.referral())))
    post_webhook(p.delivery(p.text("hi", ts=1750276100), contacts=[p.contact(user_id=BSUID)]))
    # and then the number is withheld
    post_webhook(_bsuid_only({"ts": 1750276200}))
    assert count(services, Conversation) == 1
    conversation = one(services, Conversation)
    assert (conversation.wa_id, conversation.user_id) == (WA_ID, BSUID)
    assert count(services, Message) == 3


def test_phone_number_id_picks_among_two_numbers(post_webhook, client, admin_headers):
    post_webhook(_bsuid_only({"ts": 1750276000, "ref": p.referral()}))
    post_webhook(_bsuid_only({"ts": 1750279000}, phone_number_id=OTHER_NUMBER))

    def get(**query):
        return client.get(
            f"/admin/conversations/{BSUID}", headers=admin_headers, query_string=query
        )

    r = get(phone_number_id=PHONE_NUMBER_ID)
    assert r.status_code == 200
    assert (r.json["phone_number_id"], r.json["ctwa_clid"]) == (PHONE_NUMBER_ID, p.CLICK_ID)
    r = get(phone_number_id=OTHER_NUMBER)
    assert (r.json["phone_number_id"], r.json["ctwa_clid"]) == (OTHER_NUMBER, None)
    r = get()  # the most recently active
    assert r.json["phone_number_id"] == OTHER_NUMBER
    assert get(phone_number_id="999999999999").status_code == 404

    # A newer message on the first number makes it the most recently active.
    post_webhook(_bsuid_only({"ts": 1750280000}))
    assert get().json["phone_number_id"] == PHONE_NUMBER_ID


def test_most_recent_is_by_message_time_not_arrival(post_webhook, client, admin_headers):
    post_webhook(p.delivery(p.text("late one", ts=1750279000), phone_number_id=OTHER_NUMBER))
    post_webhook(p.delivery(p.text("early one", ts=1750276000)))  # arrives last, is older
    r = client.get(f"/admin/conversations/{WA_ID}", headers=admin_headers)
    assert r.json["phone_number_id"] == OTHER_NUMBER


def test_unknown_user_is_404(post_webhook, client, admin_headers):
    post_webhook(_bsuid_only())
    for user in ("US.00000000000000000000", "16505559999"):
        r = client.get(f"/admin/conversations/{user}", headers=admin_headers)
        assert r.status_code == 404
        assert r.json["error"]["code"] == "conversation_not_found"


def test_conversation_lookup_needs_the_admin_token(post_webhook, client):
    post_webhook(_bsuid_only())
    assert client.get(f"/admin/conversations/{BSUID}").status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert client.get(f"/admin/conversations/{BSUID}", headers=bad).status_code == 401


def test_message_with_neither_id_is_a_notice_not_a_conversation(post_webhook, services):
    from waconv.models import WebhookNotice

    r = post_webhook(p.delivery(p.text("who?", wa_id=None), contacts=[]))
    assert r.status_code == 200
    assert count(services, Conversation) == 0
    assert count(services, Message) == 0
    assert one(services, WebhookNotice).kind == "malformed"
