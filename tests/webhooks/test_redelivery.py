"""Meta delivers at least once: every message takes effect once, also when redeliveries race."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests import payloads as p
from tests.conftest import encode, signed_headers
from tests.webhooks.helpers import count, live_server, one, rows
from waconv.models import Click, Conversation, Conversion, Message, WebhookDelivery

RULE = """
[[rules]]
name = "asked-for-price"
on = "message"
match = "(?i)\\\\b(price|buy)\\\\b"
event = "LeadSubmitted"
once = false
"""


def test_same_bytes_twice_is_a_duplicate_with_no_second_effect(post_webhook, services):
    body = encode(p.delivery(p.text("hi", ref=p.referral())))
    first = post_webhook(None, raw=body)
    assert first.status_code == 200
    assert first.json["status"] == "stored"
    second = post_webhook(None, raw=body)
    assert second.status_code == 200
    assert second.json == {"status": "duplicate", "delivery_id": first.json["delivery_id"]}
    assert count(services, WebhookDelivery) == 1
    assert count(services, Message) == 1
    assert count(services, Click) == 1


def test_same_message_in_another_batch_takes_no_second_effect(make_app, rules_path, admin_headers):
    rules_path.write_text(RULE)
    app = make_app()
    services = app.extensions["waconv"]
    client = app.test_client()
    now = int(time.time())
    msg = p.text("what is the price?", ts=now, ref=p.referral())

    def post(payload):
        body = encode(payload)
        return client.post("/webhook", data=body, headers=signed_headers(body))

    assert post(p.delivery(msg)).json["status"] == "stored"
    before = client.get("/admin/conversations/16505551234", headers=admin_headers).json
    assert count(services, Conversion) == 1

    # The same message, now batched with a newer one and a status: another body entirely.
    later = p.text("thanks", ts=now + 5)
    batch = p.envelope(
        p.change(messages=[later, msg]), p.change(statuses=[p.status("w.1", "sent")])
    )
    r = post(batch)
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    assert count(services, WebhookDelivery) == 2
    assert count(services, Message) == 2
    assert count(services, Click) == 1
    assert count(services, Conversion) == 1  # the rule fired once
    after = client.get("/admin/conversations/16505551234", headers=admin_headers).json
    assert after["first_message_at"] == before["first_message_at"]
    assert after["clicked_at"] == before["clicked_at"]
    assert after["clicks"] == before["clicks"]
    assert after["last_message_at"] != before["last_message_at"]  # the new message counted
    conversion = one(services, Conversion)
    assert conversion.ctwa_clid == p.CLICK_ID
    assert conversion.status == Conversion.PENDING


# --- Racing redeliveries, against a real threaded server ---------------------------------------

THREADS = 8


def _race(url: str, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """Post every body at (nearly) the same moment, each from its own thread."""
    barrier = threading.Barrier(len(bodies))

    def send(body: bytes) -> tuple[int, dict]:
        with requests.Session() as http:
            barrier.wait(timeout=10)
            with http.post(
                f"{url}/webhook", data=body, headers=signed_headers(body), timeout=60
            ) as r:
                return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def _warm_up(url: str, connections: int) -> None:
    """Open the server's database connections first, so that the race starts in step."""
    barrier = threading.Barrier(connections)

    def ready(_: int) -> int:
        with requests.Session() as http:
            barrier.wait(timeout=10)
            with http.get(f"{url}/readyz", timeout=30) as r:
                return r.status_code

    with ThreadPoolExecutor(max_workers=connections) as pool:
        assert set(pool.map(ready, range(connections))) == {200}


def test_racing_redeliveries_of_the_same_body(app, services):
    body = encode(p.delivery(p.text("hi", ref=p.referral())))
    with live_server(app) as url:
        _warm_up(url, THREADS)
        answers = _race(url, [body] * THREADS)
    assert [status for status, _ in answers] == [200] * THREADS
    outcomes = sorted(answer["status"] for _, answer in answers)
    assert outcomes == ["duplicate"] * (THREADS - 1) + ["stored"]
    assert count(services, WebhookDelivery) == 1
    assert count(services, Message) == 1
    assert count(services, Conversation) == 1
    assert count(services, Click) == 1


def test_racing_different_bodies_carrying_the_same_message(make_app, rules_path):
    rules_path.write_text(RULE)
    app = make_app()
    services = app.extensions["waconv"]
    msg = p.text("price please", ts=int(time.time()), ref=p.referral())
    # Each body differs (a status of its own), each carries the same wamid for a new user.
    bodies = [
        encode(
            p.envelope(p.change(messages=[msg]), p.change(statuses=[p.status(f"w.{i}", "sent")]))
        )
        for i in range(THREADS)
    ]
    with live_server(app) as url:
        _warm_up(url, THREADS)
        answers = _race(url, bodies)
    assert [status for status, _ in answers] == [200] * THREADS
    assert {answer["status"] for _, answer in answers} == {"stored"}
    assert count(services, WebhookDelivery) == THREADS
    assert {d.status for d in rows(services, WebhookDelivery)} == {WebhookDelivery.PROCESSED}
    assert count(services, Message) == 1
    assert count(services, Conversation) == 1
    assert count(services, Click) == 1
    assert count(services, Conversion) == 1


def test_racing_bodies_with_the_same_messages_in_opposite_order(app, services):
    """On PostgreSQL these deadlock on the conversation rows; the victim must retry, not fail."""
    first, second = p.text("a", wa_id="16505550001"), p.text("b", wa_id="16505550002")
    contacts = [p.contact(first["from"]), p.contact(second["from"])]
    bodies = [
        encode(p.delivery(first, second, contacts=contacts)),
        encode(p.delivery(second, first, contacts=contacts[::-1])),
    ] * 3
    warm = p.delivery(p.text("x", wa_id="16505550009"), p.text("y", wa_id="16505550008"))
    with live_server(app) as url:
        _warm_up(url, len(bodies))
        _race(url, [encode(warm)])  # compiles the statements once, outside the race
        answers = _race(url, bodies)
    assert [status for status, _ in answers] == [200] * len(bodies)
    deliveries = rows(services, WebhookDelivery)
    assert len(deliveries) == 3
    assert [(d.status, d.error) for d in deliveries] == [(WebhookDelivery.PROCESSED, None)] * 3
    assert count(services, Message) == 4
    assert count(services, Conversation) == 4


def test_racing_messages_of_one_user_keep_the_latest_click_and_times(app, services):
    """Concurrent deliveries for one conversation must not overwrite each other's newer state."""
    base = 1750275992
    post_first = p.delivery(p.text("first", ts=base))
    with live_server(app) as url:
        _race(url, [encode(post_first)])  # the conversation exists before the race
        _warm_up(url, THREADS)
        bodies = [
            encode(p.delivery(p.text(f"m{i}", ts=base + 60 * i, ref=p.referral(f"click-{i}"))))
            for i in range(1, THREADS + 1)
        ]
        answers = _race(url, bodies)
    assert {(status, a["status"]) for status, a in answers} == {(200, "stored")}
    conversation = one(services, Conversation)
    assert conversation.ctwa_clid == f"click-{THREADS}"
    assert conversation.clicked_at.timestamp() == base + 60 * THREADS
    assert conversation.last_message_at.timestamp() == base + 60 * THREADS
    assert conversation.first_message_at.timestamp() == base
    assert count(services, Click) == THREADS
