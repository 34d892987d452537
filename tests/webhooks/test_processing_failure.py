"""A processing failure keeps the delivery (200 to Meta) and `waconv webhooks replay` redoes it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests import payloads as p
from tests.conftest import APP_SECRET, SECRET_KEY, VERIFY_TOKEN
from tests.webhooks.helpers import count, one
from waconv.cli import main
from waconv.conversations import store
from waconv.models import Click, Conversation, Message, WebhookDelivery
from waconv.webhooks import ingest


@pytest.fixture
def broken_store(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("conversation store unavailable")

    monkeypatch.setattr(store, "record_activity", boom)
    return monkeypatch


def _post_failing(post_webhook, services):
    r = post_webhook(p.delivery(p.text("hi", ref=p.referral()), p.text("second", ts=1750276000)))
    assert r.status_code == 200  # Meta must not redeliver for 7 days
    assert r.json["status"] == "processing_failed"
    delivery = one(services, WebhookDelivery)
    assert delivery.id == r.json["delivery_id"]
    assert delivery.status == WebhookDelivery.FAILED
    assert delivery.error == "RuntimeError: conversation store unavailable"
    assert delivery.body  # kept for the replay
    # The savepoint rolled back everything processing did, conversation included.
    assert count(services, Message) == 0
    assert count(services, Conversation) == 0
    return delivery


def _assert_processed(services, delivery_id):
    delivery = one(services, WebhookDelivery)
    assert (delivery.id, delivery.status, delivery.error) == (
        delivery_id,
        WebhookDelivery.PROCESSED,
        None,
    )
    assert delivery.attempts == 2
    assert delivery.items == 2
    assert count(services, Message) == 2
    conversation = one(services, Conversation)
    assert conversation.ctwa_clid == p.CLICK_ID
    assert count(services, Click) == 1


def test_failure_is_stored_then_replayed_by_the_service(post_webhook, services, broken_store):
    delivery = _post_failing(post_webhook, services)
    assert ingest.replay(services, all_failed=True)[0].ok is False  # still broken: still failed
    assert one(services, WebhookDelivery).status == WebhookDelivery.FAILED
    broken_store.undo()
    results = ingest.replay(services, all_failed=True)
    assert [(r.delivery_id, r.ok, r.error) for r in results] == [(delivery.id, True, None)]
    delivery = one(services, WebhookDelivery)
    assert (delivery.status, delivery.attempts) == (WebhookDelivery.PROCESSED, 3)
    assert count(services, Message) == 2
    assert one(services, Conversation).ctwa_clid == p.CLICK_ID
    # Nothing failed any more; replaying by id again changes nothing.
    assert ingest.replay(services, all_failed=True) == []
    assert ingest.replay(services, ids=[delivery.id])[0].ok
    assert count(services, Message) == 2
    assert count(services, Click) == 1


def test_failure_is_replayed_by_the_cli(post_webhook, services, broken_store, db_url, rules_path):
    delivery = _post_failing(post_webhook, services)
    broken_store.undo()
    env = {
        "WACONV_DATABASE_URL": db_url,
        "WACONV_APP_SECRET": APP_SECRET,
        "WACONV_VERIFY_TOKEN": VERIFY_TOKEN,
        "WACONV_SECRET_KEY": SECRET_KEY,
        "WACONV_RULES_FILE": str(rules_path),
    }
    result = CliRunner().invoke(main, ["webhooks", "replay", "--failed"], env=env)
    assert result.exit_code == 0, result.output
    assert f"delivery {delivery.id}: processed" in result.output
    assert "1 replayed, 0 failed" in result.output
    _assert_processed(services, delivery.id)


def test_redelivery_of_a_failed_body_is_a_duplicate(post_webhook, services, broken_store):
    """Meta's retry of the same bytes does not re-run processing; the replay command does."""
    delivery = _post_failing(post_webhook, services)
    broken_store.undo()
    raw = one(services, WebhookDelivery).body
    r = post_webhook(None, raw=raw)
    assert r.json == {"status": "duplicate", "delivery_id": delivery.id}
    assert one(services, WebhookDelivery).status == WebhookDelivery.FAILED


def test_one_failing_delivery_does_not_stop_the_next(post_webhook, services, broken_store):
    _post_failing(post_webhook, services)
    broken_store.undo()
    r = post_webhook(p.delivery(p.text("next", wa_id="16505550000")))
    assert r.json["status"] == "stored"
    assert count(services, Message) == 1


def test_failure_whose_message_holds_a_nul_is_still_recorded(post_webhook, services, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("unexpected value 'a\x00b'")  # PostgreSQL text cannot hold NUL

    monkeypatch.setattr(store, "record_activity", boom)
    r = post_webhook(p.delivery(p.text("hi")))
    assert r.status_code == 200
    assert r.json["status"] == "processing_failed"
    assert one(services, WebhookDelivery).error == "ValueError: unexpected value 'a\\x00b'"
