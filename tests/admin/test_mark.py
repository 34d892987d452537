"""POST /admin/conversions: mark a conversion, idempotently, or say exactly what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from tests import payloads as p
from tests.admin.conftest import WA_ID, Admin, set_conversion
from tests.conftest import PHONE_NUMBER_ID, WABA_ID
from tests.webhooks.helpers import count, one, rows
from waconv.admin.service import admin_event_id
from waconv.clock import isoformat, to_unix
from waconv.models import Conversation, Conversion
from waconv.services import Services

NOW = datetime(2025, 6, 20, 12, 0, 0, tzinfo=UTC)
PURCHASE = {"value": 23.97, "currency": "usd"}


def test_mark_queues_a_pending_conversion_then_a_repeat_answers_200_with_it(
    admin: Admin, services: Services, clicked: str
) -> None:
    with freeze_time(NOW):
        first = admin.mark(
            wa_id=clicked, event_name="Purchase", custom_data=PURCHASE, order_id="A-1001"
        )
    assert first.status_code == 202, first.json
    body = first.json
    assert body["status"] == "pending"
    assert body["event_id"].startswith("adm.")
    assert body["event_time"] == "2025-06-20T12:00:00Z"
    assert body["created_at"] == "2025-06-20T12:00:00Z"
    assert body["custom_data"] == {"value": 23.97, "currency": "USD", "order_id": "A-1001"}

    stored = one(services, Conversion)
    conversation = one(services, Conversation)
    assert stored.id == body["id"]
    assert stored.event_id == body["event_id"]
    assert stored.event_id == admin_event_id(conversation, "Purchase", "A-1001")
    assert stored.status == Conversion.PENDING
    assert stored.source == "admin"
    assert stored.rule_name is None
    assert stored.order_id == "A-1001"
    assert stored.event_name == "Purchase"
    assert stored.event_time == NOW
    assert stored.next_attempt_at == NOW
    assert stored.attempts == 0
    assert stored.waba_id == WABA_ID
    assert stored.ctwa_clid == p.CLICK_ID
    assert stored.conversation_id == conversation.id
    assert stored.custom_data == {"value": 23.97, "currency": "USD", "order_id": "A-1001"}

    # Later, with other custom_data and time: the same user, event and order is the same
    # conversion; the answer is the one recorded first, and nothing changes.
    with freeze_time(NOW + timedelta(hours=1)):
        again = admin.mark(
            wa_id=clicked,
            event_name="Purchase",
            custom_data={"value": 1, "currency": "EUR"},
            order_id="A-1001",
        )
    assert again.status_code == 200
    assert again.json == body
    assert count(services, Conversion) == 1
    assert one(services, Conversion).custom_data == stored.custom_data


def test_a_repeat_shows_the_current_state(admin: Admin, services: Services, clicked: str) -> None:
    first = admin.mark(wa_id=clicked, event_name="LeadSubmitted")
    assert first.status_code == 202
    set_conversion(services, first.json["id"], status=Conversion.SENT, attempts=1)
    again = admin.mark(wa_id=clicked, event_name="LeadSubmitted")
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]
    assert again.json["status"] == "sent"
    assert again.json["attempts"] == 1


def test_other_orders_and_events_are_other_conversions(
    admin: Admin, services: Services, clicked: str
) -> None:
    answers = [
        admin.mark(wa_id=clicked, event_name="Purchase", custom_data=PURCHASE, order_id="A-1"),
        admin.mark(wa_id=clicked, event_name="Purchase", custom_data=PURCHASE, order_id="A-2"),
        admin.mark(wa_id=clicked, event_name="OrderShipped", order_id="A-1"),
        admin.mark(wa_id=clicked, event_name="LeadSubmitted"),
        admin.mark(wa_id=clicked, event_name="QualifiedLead"),
    ]
    assert [r.status_code for r in answers] == [202] * 5
    assert len({r.json["event_id"] for r in answers}) == 5
    # Without order_id, the same user and event is one conversion.
    assert admin.mark(wa_id=clicked, event_name="LeadSubmitted").status_code == 200
    assert count(services, Conversion) == 5


def test_order_id_goes_into_custom_data_and_custom_data_order_id_is_the_order(
    admin: Admin, services: Services, clicked: str
) -> None:
    r = admin.mark(wa_id=clicked, event_name="OrderCreated", order_id="B-7")
    assert r.status_code == 202
    assert r.json["custom_data"] == {"order_id": "B-7"}
    assert r.json["order_id"] == "B-7"

    inner = admin.mark(wa_id=clicked, event_name="OrderCreated", custom_data={"order_id": "B-7"})
    assert inner.status_code == 200
    assert inner.json["id"] == r.json["id"]

    same = admin.mark(
        wa_id=clicked, event_name="OrderCreated", order_id="B-7", custom_data={"order_id": "B-7"}
    )
    assert same.status_code == 200
    assert count(services, Conversion) == 1
    stored = one(services, Conversion)
    assert stored.order_id == "B-7"
    assert stored.custom_data == {"order_id": "B-7"}


def test_nulls_count_as_absent(admin: Admin, services: Services, clicked: str) -> None:
    r = admin.mark(
        wa_id=clicked,
        user_id=None,
        event_name="LeadSubmitted",
        custom_data=None,
        event_time=None,
        order_id=None,
        phone_number_id=None,
    )
    assert r.status_code == 202
    assert one(services, Conversion).custom_data is None


def test_mark_by_business_scoped_user_id(
    admin: Admin, services: Services, post_webhook: Callable[..., Any]
) -> None:
    msg = p.message(wa_id=None, from_user_id=p.USER_ID, ref=p.referral())
    assert (
        post_webhook(p.delivery(msg, contacts=[p.contact(None, user_id=p.USER_ID)])).status_code
        == 200
    )
    r = admin.mark(user_id=p.USER_ID, event_name="LeadSubmitted")
    assert r.status_code == 202, r.json
    assert one(services, Conversion).conversation_id == one(services, Conversation).id
    # A user_id is not a wa_id.
    assert admin.mark(wa_id=p.USER_ID, event_name="LeadSubmitted").status_code == 404


def test_user_id_and_wa_id_of_one_conversation_name_the_same_conversion(
    admin: Admin, services: Services, post_webhook: Callable[..., Any]
) -> None:
    msg = p.message(from_user_id=p.USER_ID, ref=p.referral())
    contact = p.contact(WA_ID, user_id=p.USER_ID)
    assert post_webhook(p.delivery(msg, contacts=[contact])).status_code == 200
    first = admin.mark(wa_id=WA_ID, event_name="LeadSubmitted")
    second = admin.mark(user_id=p.USER_ID, event_name="LeadSubmitted")
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json["id"] == first.json["id"]
    assert count(services, Conversion) == 1


def test_phone_number_id_chooses_among_the_users_conversations(
    admin: Admin, services: Services, post_webhook: Callable[..., Any]
) -> None:
    other_number = "106540352242999"
    older = p.message(ts=1750275000, ref=p.referral(ctwa_clid="CLICK-OLD"))
    newer = p.message(ts=1750276000, ref=p.referral(ctwa_clid="CLICK-NEW"))
    assert post_webhook(p.delivery(older)).status_code == 200
    assert post_webhook(p.delivery(newer, phone_number_id=other_number)).status_code == 200

    latest = admin.mark(wa_id=WA_ID, event_name="LeadSubmitted")
    assert latest.status_code == 202
    assert latest.json["ctwa_clid"] == "CLICK-NEW"
    chosen = admin.mark(wa_id=WA_ID, event_name="LeadSubmitted", phone_number_id=PHONE_NUMBER_ID)
    assert chosen.status_code == 202
    assert chosen.json["ctwa_clid"] == "CLICK-OLD"
    by_number = {c.phone_number_id: c.id for c in rows(services, Conversation)}
    assert {c.conversation_id for c in rows(services, Conversion)} == set(by_number.values())

    missing = admin.mark(wa_id=WA_ID, event_name="LeadSubmitted", phone_number_id="1")
    assert missing.status_code == 404
    assert "phone number 1" in missing.json["error"]["message"]


def test_the_same_request_finds_its_record_after_the_user_wrote_to_another_number(
    admin: Admin, services: Services, post_webhook: Callable[..., Any]
) -> None:
    # Without phone_number_id a request means the user's most recently active conversation;
    # that changes when the user writes to another of the business's numbers, and the same
    # request again must still be the same record, not a second Purchase for Meta.
    other_number = "106540352242999"
    first_chat = p.message(ts=1750275000, ref=p.referral(ctwa_clid="CLICK-OLD"))
    assert post_webhook(p.delivery(first_chat)).status_code == 200
    body = {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": PURCHASE, "order_id": "X-1"}
    first = admin.mark(**body)
    assert first.status_code == 202

    later = p.message(ts=1750276000, ref=p.referral(ctwa_clid="CLICK-NEW"))
    assert post_webhook(p.delivery(later, phone_number_id=other_number)).status_code == 200
    again = admin.mark(**body)
    assert again.status_code == 200
    assert again.json == first.json
    assert count(services, Conversion) == 1

    # Another order is another conversion, on the conversation the user is in now.
    other = admin.mark(**{**body, "order_id": "X-2"})
    assert other.status_code == 202
    assert other.json["ctwa_clid"] == "CLICK-NEW"


def test_unknown_conversation_is_404(admin: Admin, services: Services, clicked: str) -> None:
    r = admin.mark(wa_id="19995550000", event_name="LeadSubmitted")
    assert r.status_code == 404
    assert r.json["error"]["code"] == "conversation_not_found"
    assert "19995550000" in r.json["error"]["message"]
    assert count(services, Conversion) == 0


def test_conversation_without_a_click_is_422(
    admin: Admin, services: Services, not_clicked: str
) -> None:
    r = admin.mark(wa_id=not_clicked, event_name="Purchase", custom_data=PURCHASE)
    assert r.status_code == 422
    assert r.json["error"]["code"] == "no_click"
    assert "ctwa_clid" in r.json["error"]["message"]
    assert count(services, Conversion) == 0


# --- event_time and the 7-day window ----------------------------------------------------------


@pytest.mark.parametrize(
    "age",
    [timedelta(0), timedelta(hours=3), timedelta(days=7) - timedelta(minutes=10)],
    ids=["now", "3h", "10min-left"],
)
def test_event_time_within_7_days_is_accepted(
    admin: Admin, services: Services, clicked: str, age: timedelta
) -> None:
    with freeze_time(NOW):
        r = admin.mark(wa_id=clicked, event_name="LeadSubmitted", event_time=to_unix(NOW - age))
    assert r.status_code == 202, r.json
    assert r.json["event_time"] == isoformat(NOW - age)
    assert one(services, Conversion).event_time == NOW - age


@pytest.mark.parametrize(
    ("offset", "words"),
    [
        (-(timedelta(days=7) + timedelta(seconds=1)), "more than 7 days old"),
        (-timedelta(days=30), "more than 7 days old"),
        (timedelta(seconds=30), "in the future"),
        (timedelta(days=1), "in the future"),
    ],
    ids=["7d+1s", "30d", "future-30s", "future-1d"],
)
def test_event_time_outside_the_window_is_400(
    admin: Admin, services: Services, clicked: str, offset: timedelta, words: str
) -> None:
    with freeze_time(NOW):
        r = admin.mark(wa_id=clicked, event_name="LeadSubmitted", event_time=to_unix(NOW + offset))
    assert r.status_code == 400
    assert r.json["error"]["code"] == "invalid_event_time"
    assert r.json["error"]["field"] == "event_time"
    assert "event_time" in r.json["error"]["message"]
    assert words in r.json["error"]["message"]
    assert count(services, Conversion) == 0


@pytest.mark.parametrize(
    "age",
    [timedelta(days=7) - timedelta(minutes=10) + timedelta(seconds=1), timedelta(days=7)],
    ids=["9min59s-left", "0s-left"],
)
def test_event_time_too_close_to_the_7_day_limit_is_400(
    admin: Admin, services: Services, clicked: str, age: timedelta
) -> None:
    # Accepted, it would expire before a dispatcher waiting for its turn or a retry sent it.
    with freeze_time(NOW):
        r = admin.mark(wa_id=clicked, event_name="LeadSubmitted", event_time=to_unix(NOW - age))
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "invalid_event_time"
    assert r.json["error"]["field"] == "event_time"
    assert "less than 10 minutes" in r.json["error"]["message"]
    assert count(services, Conversion) == 0


def test_event_time_one_second_ahead_is_400(admin: Admin, services: Services, clicked: str) -> None:
    # The contract: an event_time in the future is refused, however little (the rules' clamp
    # of a message time a few seconds early does not apply to an operator's input).
    with freeze_time(NOW):
        r = admin.mark(wa_id=clicked, event_name="LeadSubmitted", event_time=to_unix(NOW) + 1)
    assert r.status_code == 400
    assert r.json["error"]["code"] == "invalid_event_time"
    assert "in the future" in r.json["error"]["message"]
    assert count(services, Conversion) == 0


# --- 400: one test per reason, each naming the field ------------------------------------------


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


BAD_BODIES: list[tuple[str, Any, str, str, str]] = [
    # (id, body, code, field, words in the message)
    ("list", [], "invalid_body", "body", "JSON object"),
    ("string", "hello", "invalid_body", "body", "JSON object"),
    ("number", 3, "invalid_body", "body", "JSON object"),
    ("null", None, "invalid_body", "body", "JSON object"),
    ("no-user", {"event_name": "LeadSubmitted"}, "missing_field", "wa_id", "wa_id"),
    (
        "both-users",
        {"wa_id": WA_ID, "user_id": p.USER_ID, "event_name": "LeadSubmitted"},
        "invalid_field",
        "user_id",
        "not both",
    ),
    ("no-event", {"wa_id": WA_ID}, "missing_field", "event_name", "event_name is required"),
    (
        "unknown-field",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "value": 3},
        "unknown_field",
        "value",
        "unknown field 'value'",
    ),
    (
        "unknown-event",
        {"wa_id": WA_ID, "event_name": "Lead"},
        "invalid_event_name",
        "event_name",
        "did you mean 'LeadSubmitted'",
    ),
    (
        "custom-event",
        {"wa_id": WA_ID, "event_name": "BoughtSomething"},
        "invalid_event_name",
        "event_name",
        "not a business-messaging event",
    ),
    (
        "event-name-number",
        {"wa_id": WA_ID, "event_name": 7},
        "invalid_event_name",
        "event_name",
        "event_name must be a string",
    ),
    (
        "wa-id-number",
        {"wa_id": 16505551234, "event_name": "LeadSubmitted"},
        "invalid_field",
        "wa_id",
        "wa_id must be a string",
    ),
    (
        "wa-id-empty",
        {"wa_id": "", "event_name": "LeadSubmitted"},
        "invalid_field",
        "wa_id",
        "wa_id must not be empty",
    ),
    (
        "wa-id-nul",
        {"wa_id": "1650\x005551234", "event_name": "LeadSubmitted"},
        "invalid_field",
        "wa_id",
        "NUL",
    ),
    (
        "wa-id-surrogate",
        {"wa_id": "1650\ud8005551234", "event_name": "LeadSubmitted"},
        "invalid_field",
        "wa_id",
        "surrogate",
    ),
    (
        "wa-id-long",
        {"wa_id": "1" * 256, "event_name": "LeadSubmitted"},
        "invalid_field",
        "wa_id",
        "longer than 255",
    ),
    (
        "purchase-no-custom-data",
        {"wa_id": WA_ID, "event_name": "Purchase"},
        "invalid_custom_data",
        "custom_data",
        "custom_data is required for a Purchase",
    ),
    (
        "purchase-no-currency",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"value": 10}},
        "invalid_custom_data",
        "custom_data.currency",
        "custom_data.currency",
    ),
    (
        "purchase-no-value",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"currency": "USD"}},
        "invalid_custom_data",
        "custom_data.value",
        "custom_data.value",
    ),
    (
        "value-string",
        {
            "wa_id": WA_ID,
            "event_name": "Purchase",
            "custom_data": {"value": "10", "currency": "USD"},
        },
        "invalid_custom_data",
        "custom_data.value",
        "custom_data.value must be a JSON number",
    ),
    (
        "value-negative",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"value": -1, "currency": "USD"}},
        "invalid_custom_data",
        "custom_data.value",
        "custom_data.value must be >= 0",
    ),
    (
        "currency-2-letters",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"value": 1, "currency": "US"}},
        "invalid_custom_data",
        "custom_data.currency",
        "3-letter",
    ),
    (
        "custom-data-list",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "custom_data": [1]},
        "invalid_custom_data",
        "custom_data",
        "custom_data must be a JSON object",
    ),
    (
        "custom-data-nul",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "custom_data": {"note": "a\x00b"}},
        "invalid_field",
        "custom_data.note",
        "NUL",
    ),
    (
        "custom-data-deep",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "custom_data": {"x": _nested(40)}},
        "invalid_custom_data",
        "custom_data.x" + "[0]" * 32,
        "nested more than 32 deep",
    ),
    (
        "event-time-string",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": "1750275992"},
        "invalid_event_time",
        "event_time",
        "event_time must be an integer of unix seconds",
    ),
    (
        "event-time-float",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": 1750275992.5},
        "invalid_event_time",
        "event_time",
        "event_time must be an integer",
    ),
    (
        "event-time-bool",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": True},
        "invalid_event_time",
        "event_time",
        "event_time must be an integer",
    ),
    (
        "event-time-huge",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": 10**20},
        "invalid_event_time",
        "event_time",
        "not a plausible unix time",
    ),
    (
        "event-time-milliseconds",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "event_time": 1750275992000},
        "invalid_event_time",
        "event_time",
        "it looks like milliseconds",
    ),
    (
        "custom-data-over-64-kib",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "custom_data": {"note": "x" * 65_536}},
        "invalid_custom_data",
        "custom_data",
        "at most 65536",
    ),
    (
        "currency-not-iso-4217",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"value": 1, "currency": "ZZZ"}},
        "invalid_custom_data",
        "custom_data.currency",
        "not an active ISO 4217 currency code",
    ),
    (
        "currency-withdrawn",
        {"wa_id": WA_ID, "event_name": "Purchase", "custom_data": {"value": 1, "currency": "HRK"}},
        "invalid_custom_data",
        "custom_data.currency",
        "not an active ISO 4217 currency code",
    ),
    (
        "order-id-number",
        {"wa_id": WA_ID, "event_name": "OrderCreated", "order_id": 12},
        "invalid_field",
        "order_id",
        "order_id must be a string",
    ),
    (
        "order-id-long",
        {"wa_id": WA_ID, "event_name": "OrderCreated", "order_id": "x" * 256},
        "invalid_field",
        "order_id",
        "longer than 255",
    ),
    (
        "order-id-control",
        {"wa_id": WA_ID, "event_name": "OrderCreated", "order_id": "A\x1fB"},
        "invalid_field",
        "order_id",
        "control characters",
    ),
    (
        "order-id-conflict",
        {
            "wa_id": WA_ID,
            "event_name": "OrderCreated",
            "order_id": "A-1",
            "custom_data": {"order_id": "A-2"},
        },
        "invalid_field",
        "order_id",
        "differs from custom_data.order_id",
    ),
    (
        "phone-number-id-number",
        {"wa_id": WA_ID, "event_name": "LeadSubmitted", "phone_number_id": 106540352242922},
        "invalid_field",
        "phone_number_id",
        "phone_number_id must be a string",
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "field", "words"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_bodies_are_400_naming_the_field(
    admin: Admin, services: Services, clicked: str, body: Any, code: str, field: str, words: str
) -> None:
    with freeze_time(NOW):
        r = admin.post("/admin/conversions", raw=json.dumps(body).encode())
    assert r.status_code == 400, r.json
    error = r.json["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert words in error["message"]
    assert count(services, Conversion) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"wa_id": "16505551234", "event_name": "Purchase", "custom_data": '
        b'{"value": NaN, "currency": "USD"}}',
        b'{"wa_id": "16505551234", "event_name": "Purchase", "custom_data": '
        b'{"value": 1e400, "currency": "USD"}}',
        b'{"wa_id": "16505551234", "event_name": "LeadSubmitted", "custom_data": {"x": 1e999}}',
        b"\xff\xfe",
    ],
    ids=["empty", "truncated", "text", "nan", "infinite-value", "infinite-custom", "not-utf8"],
)
def test_bodies_that_are_not_json_or_not_finite_are_400(
    admin: Admin, services: Services, clicked: str, raw: bytes
) -> None:
    r = admin.post("/admin/conversions", raw=raw)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] in {"invalid_json", "invalid_custom_data"}
    assert r.json["error"]["field"] in {"body", "custom_data.value", "custom_data.x"}
    assert count(services, Conversion) == 0


def test_custom_data_of_64_kib_is_accepted(admin: Admin, services: Services, clicked: str) -> None:
    # {"note":"..."} is 11 bytes around the text: exactly 64 KiB as compact JSON.
    with freeze_time(NOW):
        r = admin.mark(
            wa_id=clicked, event_name="LeadSubmitted", custom_data={"note": "x" * (65_536 - 11)}
        )
    assert r.status_code == 202, r.json


def test_validation_comes_before_the_conversation_lookup(admin: Admin, services: Services) -> None:
    r = admin.mark(wa_id="19995550000", event_name="Lead")
    assert r.status_code == 400
    assert r.json["error"]["field"] == "event_name"
