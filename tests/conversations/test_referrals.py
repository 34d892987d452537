"""Referral capture: which ad click started the conversation (meta-api.md §2.1, §9.6-9.7)."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from tests import payloads as p
from tests.conftest import PHONE_NUMBER_ID
from tests.webhooks.helpers import count, one, rows
from waconv.models import Click, Conversation

WA_ID = "16505551234"
T0 = 1750275992  # 2025-06-18T19:46:32Z
OTHER_CLICK = "Bff-second-click-" + "x" * 60


@pytest.fixture
def conversation_json(client, admin_headers):
    def get(user: str = WA_ID, **query: str) -> dict:
        r = client.get(f"/admin/conversations/{user}", headers=admin_headers, query_string=query)
        assert r.status_code == 200, r.data
        return r.json

    return get


def test_every_referral_field_is_captured_and_exposed(post_webhook, services, conversation_json):
    ref = p.referral()
    assert post_webhook(p.delivery(p.text("info?", ts=T0, ref=ref))).status_code == 200
    body = conversation_json()
    assert body["wa_id"] == WA_ID
    assert body["ctwa_clid"] == p.CLICK_ID
    for key in ("source_id", "source_type", "source_url", "headline", "body", "media_type"):
        assert body["referral"][key] == ref[key], key
    assert body["referral"]["image_url"] == ref["image_url"]
    assert body["referral"]["welcome_message"] == ref["welcome_message"]["text"]
    assert body["clicked_at"] == "2025-06-18T19:46:32Z"
    assert body["first_message_at"] == "2025-06-18T19:46:32Z"
    assert body["last_message_at"] == "2025-06-18T19:46:32Z"
    assert [c["ctwa_clid"] for c in body["clicks"]] == [p.CLICK_ID]
    click = one(services, Click)
    assert click.referral == ref  # as Meta sent it
    assert (click.source_id, click.headline, click.body) == (
        "120226305854810726",
        "Chat with us",
        "Summer Succulents are here!",
    )
    assert click.welcome_message == "Hi there! Let us know how we can help!"


def test_video_ad_fields_are_kept(post_webhook, services, conversation_json):
    ref = p.referral(
        media_type="video",
        video_url="https://video.xx.fbcdn.net/v/t42.1",
        thumbnail_url="https://scontent.xx.fbcdn.net/v/t15.1",
    )
    del ref["image_url"]
    post_webhook(p.delivery(p.text("hi", ref=ref)))
    body = conversation_json()
    assert body["referral"]["media_type"] == "video"
    assert body["referral"]["video_url"] == ref["video_url"]
    assert body["referral"]["thumbnail_url"] == ref["thumbnail_url"]
    assert body["referral"]["image_url"] is None


@pytest.mark.parametrize("kind", ["audio", "image", "location"])
def test_referral_on_a_non_text_first_message_counts(post_webhook, conversation_json, kind):
    msg = p.location(ref=p.referral()) if kind == "location" else p.media(kind, ref=p.referral())
    assert post_webhook(p.delivery(msg)).status_code == 200
    body = conversation_json()
    assert body["ctwa_clid"] == p.CLICK_ID
    assert body["clicked_at"] == "2025-06-18T19:46:32Z"


@pytest.mark.parametrize("clid", [p.CLICK_ID, None])
def test_a_new_user_s_conversation_is_inserted_with_its_click_and_not_updated(
    post_webhook, services, conversation_json, clid
):
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(" ".join(statement.split()[:3]))

    event.listen(services.db.engine, "before_cursor_execute", seen)
    try:
        ref = p.referral(ctwa_clid=clid)
        assert post_webhook(p.delivery(p.text("hi", ts=T0, ref=ref))).status_code == 200
    finally:
        event.remove(services.db.engine, "before_cursor_execute", seen)
    assert "INSERT INTO conversations" in statements
    assert "UPDATE conversations SET" not in statements, statements
    body = conversation_json()
    assert body["ctwa_clid"] == clid
    assert body["referral"]["source_id"] == ref["source_id"]
    assert body["clicked_at"] == body["first_message_at"] == body["last_message_at"]


def test_later_messages_without_referral_keep_the_click(post_webhook, conversation_json):
    post_webhook(p.delivery(p.text("first", ts=T0, ref=p.referral())))
    post_webhook(p.delivery(p.text("second", ts=T0 + 60)))
    body = conversation_json()
    assert body["ctwa_clid"] == p.CLICK_ID
    assert body["clicked_at"] == "2025-06-18T19:46:32Z"
    assert body["first_message_at"] == "2025-06-18T19:46:32Z"
    assert body["last_message_at"] == "2025-06-18T19:47:32Z"


def test_status_ad_referral_without_click_id_never_erases_the_click(
    post_webhook, services, conversation_json
):
    post_webhook(p.delivery(p.text("first", ts=T0, ref=p.referral())))
    status_ad = p.referral(ctwa_clid=None, source_id="999", headline="Status ad")
    r = post_webhook(p.delivery(p.text("from status", ts=T0 + 60, ref=status_ad)))
    assert r.status_code == 200
    body = conversation_json()
    assert body["ctwa_clid"] == p.CLICK_ID
    assert body["referral"]["source_id"] == "120226305854810726"
    assert body["clicked_at"] == "2025-06-18T19:46:32Z"
    assert [c["ctwa_clid"] for c in body["clicks"]] == [p.CLICK_ID, None]  # history keeps both
    assert count(services, Click) == 2


def test_status_ad_referral_alone_is_kept_without_a_click_id(post_webhook, conversation_json):
    status_ad = p.referral(ctwa_clid=None, source_id="999")
    post_webhook(p.delivery(p.text("from status", ts=T0, ref=status_ad)))
    body = conversation_json()
    assert body["ctwa_clid"] is None
    assert body["referral"]["source_id"] == "999"
    assert len(body["clicks"]) == 1


def test_newer_click_replaces_the_latest_and_history_keeps_both(
    post_webhook, services, conversation_json
):
    post_webhook(p.delivery(p.text("first", ts=T0, ref=p.referral())))
    newer = p.referral(ctwa_clid=OTHER_CLICK, source_id="120226305854810999", headline="New ad")
    post_webhook(p.delivery(p.text("again", ts=T0 + 3600, ref=newer)))
    body = conversation_json()
    assert body["ctwa_clid"] == OTHER_CLICK
    assert body["referral"]["source_id"] == "120226305854810999"
    assert body["referral"]["headline"] == "New ad"
    assert body["clicked_at"] == "2025-06-18T20:46:32Z"
    assert body["first_message_at"] == "2025-06-18T19:46:32Z"
    assert [(c["ctwa_clid"], c["clicked_at"]) for c in body["clicks"]] == [
        (p.CLICK_ID, "2025-06-18T19:46:32Z"),
        (OTHER_CLICK, "2025-06-18T20:46:32Z"),
    ]
    assert count(services, Conversation) == 1


def test_older_click_delivered_late_does_not_replace_a_newer_one(
    post_webhook, services, conversation_json
):
    newer = p.referral(ctwa_clid=OTHER_CLICK, source_id="120226305854810999")
    post_webhook(p.delivery(p.text("newer", ts=T0 + 3600, ref=newer)))
    post_webhook(p.delivery(p.text("older, late", ts=T0, ref=p.referral())))  # Meta retried it
    body = conversation_json()
    assert body["ctwa_clid"] == OTHER_CLICK
    assert body["referral"]["source_id"] == "120226305854810999"
    assert body["clicked_at"] == "2025-06-18T20:46:32Z"
    assert body["first_message_at"] == "2025-06-18T19:46:32Z"  # the earliest, whatever came first
    assert body["last_message_at"] == "2025-06-18T20:46:32Z"
    assert [c["ctwa_clid"] for c in body["clicks"]] == [p.CLICK_ID, OTHER_CLICK]  # by time


@pytest.mark.parametrize(
    "ref",
    [
        {},
        {"ctwa_clid": p.CLICK_ID},
        {"source_type": "ad"},
        {"source_url": "https://fb.me/x", "welcome_message": "not an object"},
        {"ctwa_clid": p.CLICK_ID, "image": {"id": "1234"}},  # older On-Premises shape
    ],
    ids=["empty", "click-only", "type-only", "odd-welcome", "on-premises"],
)
def test_every_referral_field_is_optional(post_webhook, services, conversation_json, ref):
    r = post_webhook(p.delivery(p.text("hi", ref=ref)))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    body = conversation_json()
    assert body["ctwa_clid"] == ref.get("ctwa_clid")
    assert body["first_message_at"] == "2025-06-18T19:46:32Z"
    click = one(services, Click)
    assert click.ctwa_clid == ref.get("ctwa_clid")
    assert click.referral == ref


def test_referral_that_is_not_an_object_is_ignored(post_webhook, services, conversation_json):
    for bad in (None, "ad", ["x"], 3):
        post_webhook(p.delivery(p.text("hi", ref=bad)))  # type: ignore[arg-type]
    assert count(services, Click) == 0
    assert conversation_json()["ctwa_clid"] is None


def test_referral_with_wrongly_typed_fields_keeps_what_it_can(post_webhook, conversation_json):
    ref = {"ctwa_clid": p.CLICK_ID, "source_id": 120226305854810726, "headline": {"x": 1}}
    r = post_webhook(p.delivery(p.text("hi", ref=ref)))
    assert r.status_code == 200
    body = conversation_json()
    assert body["ctwa_clid"] == p.CLICK_ID
    assert body["referral"]["headline"] is None


def test_click_is_per_business_number(post_webhook, services, conversation_json):
    other_number = "108427883974416"
    post_webhook(p.delivery(p.text("hi", ref=p.referral())))
    post_webhook(p.delivery(p.text("hi there", ts=T0 + 10), phone_number_id=other_number))
    assert conversation_json(phone_number_id=other_number)["ctwa_clid"] is None

    assert conversation_json(phone_number_id=PHONE_NUMBER_ID)["ctwa_clid"] == p.CLICK_ID
    assert len(rows(services, Conversation)) == 2
