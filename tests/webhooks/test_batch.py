"""The set-based path (waconv.webhooks.batch) leaves exactly what one delivery at a time does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import event, func, select

from tests import payloads as p
from tests.conftest import encode
from waconv.models import (
    Click,
    Conversation,
    Conversion,
    Message,
    UserAlias,
    WebhookDelivery,
    WebhookNotice,
)
from waconv.webhooks import batch, ingest, processor

NOW = 1_780_000_000  # 2026-05-28: the frozen clock, and the messages' times around it
RULES = """
[[rules]]
name = "asked-for-price"
on = "message"
match = "(?i)\\\\b(price|buy)\\\\b"
event = "LeadSubmitted"

[[rules]]
name = "every-message"
on = "message"
event = "ViewContent"
once = false
"""


def _msg(maker, *args, wa_id=None, user_id=None, ts=NOW - 60, **kw):
    msg = maker(*args, wa_id=wa_id, ts=ts, **kw)
    if user_id is not None:
        msg["from_user_id"] = user_id
    return msg


def _contact(wa_id=None, user_id=None):
    extra = {"user_id": user_id} if user_id else {}
    return p.contact(wa_id, **extra)


def _one(msg, wa_id=None, user_id=None):
    return p.delivery(msg, contacts=[_contact(wa_id, user_id)])


def _scenario() -> list[dict[str, Any]]:
    """Plain new users, and every kind of delivery that must leave the set-based path,
    interleaved with them."""
    clicked = _msg(p.text, "What is the price?", wa_id="5511000000001", ref=p.referral("A-1"))
    repeated = dict(clicked, text={"body": "Is it still there?"}, id="wamid.REDELIVERED")
    return [
        _one(clicked, "5511000000001"),
        _one(_msg(p.text, "hello", wa_id="5511000000002"), "5511000000002"),
        _one(
            _msg(p.text, "buy", wa_id="5511000000003", ref=p.referral(None)),
            "5511000000003",
        ),
        # The same user again in the same batch, after their click.
        _one(_msg(p.text, "I will buy it", wa_id="5511000000001", ts=NOW - 30), "5511000000001"),
        # The same message id twice, in different bodies.
        _one(repeated, "5511000000001"),
        _one(dict(repeated, context={"id": "x"}), "5511000000001"),
        p.envelope(p.change(statuses=[p.status("wamid.SENT1", "delivered")])),
        # A user who changes number, then writes from the new one.
        _one(
            _msg(p.text, "price", wa_id="5511000000004", ref=p.referral("D-1"), ts=NOW - 50),
            "5511000000004",
        ),
        _one(p.changed_number("5511000000004", "5511000000044", ts=NOW - 40), "5511000000004"),
        _one(_msg(p.text, "price again", wa_id="5511000000044", ts=NOW - 20), "5511000000044"),
        _one(
            _msg(p.text, "group price", wa_id="5511000000005", group_id="G1", ref=p.referral("G")),
            "5511000000005",
        ),
        _one(
            _msg(p.button_reply, "Price list", wa_id="5511000000006", ref=p.referral("E-1")),
            "5511000000006",
        ),
        # Only a business-scoped id, and two new users in one delivery.
        _one(_msg(p.text, "price?", user_id="BR.777", ref=p.referral("F-1")), user_id="BR.777"),
        p.delivery(
            _msg(p.text, "buy", wa_id="5511000000007", ref=p.referral("G-1")),
            _msg(p.text, "hi", wa_id="5511000000008", ref=p.referral("H-1")),
            contacts=[_contact("5511000000007"), _contact("5511000000008")],
        ),
        # A follow-up processed before its click message (Meta does not promise order).
        _one(_msg(p.text, "buy now", wa_id="5511000000009", ts=NOW - 10), "5511000000009"),
        _one(
            _msg(p.text, "hi", wa_id="5511000000009", ts=NOW - 15, ref=p.referral("I-1")),
            "5511000000009",
        ),
        # An old message: its conversion is recorded expired.
        _one(
            _msg(p.text, "price", wa_id="5511000000010", ts=NOW - 9 * 86400, ref=p.referral("J")),
            "5511000000010",
        ),
        p.envelope(p.change(messages=[p.text("no id", wa_id="5511000000011")]))
        | {"entry": [{"id": "not-a-waba", "changes": []}]},
    ]


def _sorted(rows):
    return sorted(rows, key=repr)  # None beside strings


def _snapshot(services) -> dict[str, Any]:
    def user(conversation_id):
        c = session.get(Conversation, conversation_id)
        return None if c is None else (c.phone_number_id, c.wa_id, c.user_id)

    with services.db.transaction() as session:
        conversations = _sorted(
            (
                c.phone_number_id,
                c.wa_id,
                c.user_id,
                c.profile_name,
                c.parent_user_id,
                c.display_phone_number,
                c.ctwa_clid,
                json.dumps(c.referral, sort_keys=True),
                c.clicked_at,
                c.first_message_at,
                c.last_message_at,
            )
            for c in session.scalars(select(Conversation))
        )
        messages = _sorted(
            (
                m.wamid,
                user(m.conversation_id),
                m.type,
                m.timestamp,
                m.text,
                m.origin,
                m.group_id,
                json.dumps(m.payload, sort_keys=True),
            )
            for m in session.scalars(select(Message))
        )
        clicks = _sorted(
            (
                c.message_wamid,
                user(c.conversation_id),
                c.ctwa_clid,
                c.clicked_at,
                c.source_id,
                c.headline,
                c.welcome_message,
                json.dumps(c.referral, sort_keys=True),
            )
            for c in session.scalars(select(Click))
        )
        conversions = _sorted(
            (
                c.event_id,
                c.event_name,
                c.ctwa_clid,
                c.event_time,
                c.status,
                c.rule_name,
                user(c.conversation_id),
                c.last_error,
                repr(c.custom_data),
                repr(c.extra),
            )
            for c in session.scalars(select(Conversion))
        )
        notices = _sorted(
            (n.kind, n.message or "", n.field or "") for n in session.scalars(select(WebhookNotice))
        )
        aliases = _sorted(
            (a.kind, a.previous, a.current) for a in session.scalars(select(UserAlias))
        )
        deliveries = [
            (d.status, d.items, d.error)
            for d in session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
        ]
    return {
        "conversations": conversations,
        "messages": messages,
        "clicks": clicks,
        "conversions": conversions,
        "notices": notices,
        "aliases": aliases,
        "deliveries": deliveries,
    }


def _drain(services, bodies) -> int:
    for body in bodies:
        ingest.store(services, body)
    return processor.drain(services)


@freeze_time("2026-05-28 20:26:40")
@pytest.mark.parametrize("customer_info", [False, True])
def test_a_batch_leaves_what_one_delivery_at_a_time_leaves(
    make_app, db_url, _databases, rules_path, monkeypatch, caplog, customer_info
):
    rules_path.write_text(RULES)
    bodies = [encode(d) for d in _scenario()]
    monkeypatch.setattr(ingest, "_pace", ingest._Pace(0.0))  # the clock stands still

    one_by_one = make_app(webhook_processing="background", send_customer_info=customer_info)
    with monkeypatch.context() as m:
        m.setattr(batch, "plain_messages", lambda *_: None)
        assert _drain(one_by_one.extensions["waconv"], bodies) == len(bodies)
    expected = _snapshot(one_by_one.extensions["waconv"])
    _databases.empty("postgresql" if db_url.startswith("postgresql") else "sqlite")

    applied: list[str] = []
    real = batch.apply_plain

    def spy(session, services, plains):
        applied.extend(plain.wamid for plain in plains)
        return real(session, services, plains)

    monkeypatch.setattr(batch, "apply_plain", spy)
    together = make_app(webhook_processing="background", send_customer_info=customer_info)
    assert _drain(together.extensions["waconv"], bodies) == len(bodies)
    assert _snapshot(together.extensions["waconv"]) == expected
    # The plain new users went set-based (and it did not fail); the rest did not.
    assert len(applied) == 8, applied
    assert "retrying_one_by_one" not in caplog.text
    assert expected["conversions"] and expected["clicks"] and expected["aliases"]
    assert {status for status, _, _ in expected["deliveries"]} == {WebhookDelivery.PROCESSED}


def test_an_idle_processor_takes_bigger_transactions_than_a_busy_one(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    count = ingest.PROCESS_BATCH + 1
    for i in range(count):
        ingest.store(services, encode(p.delivery(p.text(f"i{i}", wa_id=f"1555000{i:04d}"))))
    transactions = []
    real = ingest.process_received

    def counting(services_, **kw):
        done = real(services_, **kw)
        transactions.append(done)
        return done

    monkeypatch.setattr(processor, "process_received", counting)
    monkeypatch.setattr(ingest, "_pace", ingest._Pace(0.0))
    with freeze_time("2026-11-24 10:00:00"):  # no budget ends a transaction
        assert processor.drain(services) == count
    assert transactions[0] == count


def test_what_databases_refuse_is_replaced_on_the_set_based_path_too(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    msg = p.text("nul \u0000 and lone \ud800 inside", ref=p.referral(source_id="1\u00002"))
    msg["context"] = {"k\u0000": "v"}
    applied: list[str] = []
    real = batch.apply_plain

    def spy(session, services_, plains):
        applied.extend(plain.text or "" for plain in plains)
        return real(session, services_, plains)

    monkeypatch.setattr(batch, "apply_plain", spy)
    plain = p.text("plain", wa_id="15550001111")
    assert _drain(services, [encode(p.delivery(msg)), encode(_one(plain, "15550001111"))]) == 2
    with services.db.transaction() as session:
        texts = sorted(session.scalars(select(Message.text)))
        clicks = list(session.scalars(select(Click.source_id)))
    assert texts == ["nul \ufffd and lone ? inside", "plain"]
    assert clicks == ["1\ufffd2"]
    assert sorted(applied) == texts


def test_a_batch_inserts_its_clicks_in_one_statement(make_app, monkeypatch):
    """One INSERT for a batch's clicks, not one per click: the click rollup's trigger runs once
    per statement on PostgreSQL, and per-row statements made it the processors' whole cost."""
    services = make_app(webhook_processing="background").extensions["waconv"]
    for i in range(20):
        ref = p.referral(ctwa_clid=f"clid-{i}")
        ingest.store(
            services, encode(p.delivery(p.text(f"i{i}", wa_id=f"1555100{i:04d}", ref=ref)))
        )
    inserts: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO clicks"):  # a list: the driver's executemany
            inserts.append("executemany" if isinstance(parameters, list) else "one statement")

    event.listen(services.db.engine, "before_cursor_execute", seen)
    monkeypatch.setattr(ingest, "_pace", ingest._Pace(0.0))
    try:
        with freeze_time("2026-11-24 10:00:00"):
            assert processor.drain(services) == 20
    finally:
        event.remove(services.db.engine, "before_cursor_execute", seen)
    with services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Click)) == 20
    # SQLite: one executemany (its rollup triggers are per row); PostgreSQL: one statement
    # (psycopg's executemany sends a statement per row).
    expected = "executemany" if services.db.dialect == "sqlite" else "one statement"
    assert inserts == [expected]
