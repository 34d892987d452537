"""GET /admin/conversions (filters, keyset pages) and GET /admin/conversions/<id>."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from tests import payloads as p
from tests.admin.conftest import OTHER_WA_ID, WA_ID, Admin, set_conversion
from tests.webhooks.helpers import count
from waconv.admin.service import DEFAULT_LIMIT, MAX_LIMIT, encode_cursor
from waconv.clock import utcnow
from waconv.conversions.outbox import enqueue
from waconv.models import Conversation, Conversion
from waconv.services import Services

NOW = datetime(2025, 6, 20, 12, 0, 0, tzinfo=UTC)
ITEM_KEYS = {
    "id",
    "event_id",
    "event_name",
    "status",
    "attempts",
    "last_error",
    "last_error_code",
    "last_error_subcode",
    "event_time",
    "created_at",
    "sent_at",
    "next_attempt_at",
    "waba_id",
    "dataset_id",
    "conversation_id",
    "ctwa_clid",
    "source",
    "rule_name",
    "order_id",
    "custom_data",
    "destinations",
}


def add_conversions(
    services: Services,
    wa_id: str,
    n: int,
    *,
    event_name: str = "OrderCreated",
    source: str = "admin",
    prefix: str = "bulk",
) -> list[int]:
    """n conversions of the user's conversation, straight through the outbox."""
    ids = []
    with services.db.transaction() as session:
        conversation = session.scalars(
            select(Conversation).where(Conversation.wa_id == wa_id)
        ).one()
        for i in range(n):
            enqueued = enqueue(
                session,
                event_id=f"{prefix}.{wa_id}.{event_name}.{i}",
                waba_id=conversation.waba_id,
                ctwa_clid=conversation.ctwa_clid or "no-click",
                event_name=event_name,
                event_time=utcnow() - timedelta(minutes=i),
                source=source,
                rule_name="a-rule" if source == "rule" else None,
                conversation_id=conversation.id,
                order_id=f"O-{i}",
            )
            ids.append(enqueued.conversion.id)
    return ids


@pytest.fixture
def two_users(post_webhook: Callable[..., Any]) -> None:
    """WA_ID and OTHER_WA_ID, both with a click."""
    for wa_id, clid in ((WA_ID, "CLICK-A"), (OTHER_WA_ID, "CLICK-B")):
        msg = p.message(wa_id=wa_id, ref=p.referral(ctwa_clid=clid))
        assert post_webhook(p.delivery(msg, contacts=[p.contact(wa_id)])).status_code == 200


def _ids(r: Any) -> list[int]:
    assert r.status_code == 200, r.json
    return [item["id"] for item in r.json["items"]]


def test_empty_list(admin: Admin) -> None:
    r = admin.get("/admin/conversions")
    assert r.status_code == 200
    assert r.json == {"items": [], "next_cursor": None}


def test_items_carry_the_outbox_state(admin: Admin, services: Services, clicked: str) -> None:
    with freeze_time(NOW):
        marked = admin.mark(
            wa_id=clicked,
            event_name="Purchase",
            custom_data={"value": 10, "currency": "BRL"},
            order_id="X-1",
        ).json
    set_conversion(
        services,
        marked["id"],
        status=Conversion.FAILED,
        attempts=3,
        last_error="Meta refused the event: invalid ctwa_clid",
        last_error_code=100,
        last_error_subcode=2804050,
    )
    r = admin.get("/admin/conversions")
    assert r.status_code == 200
    [item] = r.json["items"]
    assert set(item) == ITEM_KEYS
    assert item == {
        **marked,
        "status": "failed",
        "attempts": 3,
        "last_error": "Meta refused the event: invalid ctwa_clid",
        "last_error_code": 100,
        "last_error_subcode": 2804050,
        "destinations": {
            "graph": {
                "status": "failed",
                "attempts": 3,
                "last_error": "Meta refused the event: invalid ctwa_clid",
            }
        },
    }
    assert item["event_time"] == "2025-06-20T12:00:00Z"
    assert item["created_at"] == "2025-06-20T12:00:00Z"
    assert item["sent_at"] is None
    assert r.json["next_cursor"] is None
    detail = admin.get(f"/admin/conversions/{item['id']}").json
    assert {key: detail[key] for key in ITEM_KEYS} == item


def test_filters(admin: Admin, services: Services, two_users: None) -> None:
    a_orders = add_conversions(services, WA_ID, 3, prefix="a")
    a_leads = add_conversions(services, WA_ID, 2, event_name="LeadSubmitted", source="rule")
    b_orders = add_conversions(services, OTHER_WA_ID, 2, prefix="b")
    set_conversion(services, a_orders[0], status=Conversion.SENT)
    set_conversion(services, b_orders[1], status=Conversion.FAILED)
    set_conversion(services, a_leads[1], status=Conversion.EXPIRED)

    newest_first = sorted(a_orders + a_leads + b_orders, reverse=True)
    assert _ids(admin.get("/admin/conversions")) == newest_first
    assert _ids(admin.get("/admin/conversions", status="sent")) == [a_orders[0]]
    assert _ids(admin.get("/admin/conversions", status="failed")) == [b_orders[1]]
    assert _ids(admin.get("/admin/conversions", status="expired")) == [a_leads[1]]
    assert _ids(admin.get("/admin/conversions", status="pending")) == sorted(
        [*a_orders[1:], a_leads[0], b_orders[0]], reverse=True
    )
    # In flight is pending too: there is no "sending" to filter on.
    assert admin.get("/admin/conversions", status="sending").status_code == 400
    assert _ids(admin.get("/admin/conversions", event_name="LeadSubmitted")) == a_leads[::-1]
    assert _ids(admin.get("/admin/conversions", source="rule")) == a_leads[::-1]
    assert _ids(admin.get("/admin/conversions", source="automatic_event")) == []
    assert _ids(admin.get("/admin/conversions", wa_id=OTHER_WA_ID)) == b_orders[::-1]
    assert _ids(admin.get("/admin/conversions", wa_id="19990000000")) == []
    assert (
        _ids(
            admin.get(
                "/admin/conversions", wa_id=WA_ID, event_name="OrderCreated", status="pending"
            )
        )
        == a_orders[1:][::-1]
    )


def test_user_id_filter(admin: Admin, services: Services, post_webhook: Callable[..., Any]) -> None:
    msg = p.message(wa_id=None, from_user_id=p.USER_ID, ref=p.referral())
    assert (
        post_webhook(p.delivery(msg, contacts=[p.contact(None, user_id=p.USER_ID)])).status_code
        == 200
    )
    marked = admin.mark(user_id=p.USER_ID, event_name="LeadSubmitted")
    assert marked.status_code == 202
    assert _ids(admin.get("/admin/conversions", user_id=p.USER_ID)) == [marked.json["id"]]
    assert _ids(admin.get("/admin/conversions", user_id="US.0")) == []


def test_cursor_walk_returns_every_item_once(
    admin: Admin, services: Services, clicked: str
) -> None:
    ids = add_conversions(services, WA_ID, 23)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 5}
        if cursor:
            query["cursor"] = cursor
        r = admin.get("/admin/conversions", **query)
        page = _ids(r)
        pages += 1
        assert len(page) == (5 if pages < 5 else 3)
        seen += page
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted(ids, reverse=True)


def test_walk_with_a_filter_and_a_page_that_ends_exactly(
    admin: Admin, services: Services, clicked: str
) -> None:
    orders = add_conversions(services, WA_ID, 6)
    add_conversions(services, WA_ID, 5, event_name="LeadSubmitted")
    first = admin.get("/admin/conversions", event_name="OrderCreated", limit=3)
    assert _ids(first) == sorted(orders, reverse=True)[:3]
    second = admin.get(
        "/admin/conversions", event_name="OrderCreated", limit=3, cursor=first.json["next_cursor"]
    )
    assert _ids(second) == sorted(orders, reverse=True)[3:]
    # Exactly a full page left: no next page to fetch empty.
    assert second.json["next_cursor"] is None


def test_rows_added_during_a_walk_do_not_repeat_items(
    admin: Admin, services: Services, clicked: str
) -> None:
    ids = add_conversions(services, WA_ID, 4)
    first = admin.get("/admin/conversions", limit=2)
    add_conversions(services, WA_ID, 3, prefix="later")
    rest = admin.get("/admin/conversions", limit=10, cursor=first.json["next_cursor"])
    assert _ids(first) + _ids(rest) == sorted(ids, reverse=True)


def test_default_and_maximum_limit(admin: Admin, services: Services, clicked: str) -> None:
    add_conversions(services, WA_ID, DEFAULT_LIMIT + 1)
    default = admin.get("/admin/conversions")
    assert len(_ids(default)) == DEFAULT_LIMIT
    assert default.json["next_cursor"] is not None
    everything = admin.get("/admin/conversions", limit=MAX_LIMIT)
    assert len(_ids(everything)) == DEFAULT_LIMIT + 1
    assert everything.json["next_cursor"] is None
    assert count(services, Conversion) == DEFAULT_LIMIT + 1


@pytest.mark.parametrize(
    ("query", "code", "field"),
    [
        ({"limit": 1001}, "invalid_limit", "limit"),
        ({"limit": 0}, "invalid_limit", "limit"),
        ({"limit": -1}, "invalid_limit", "limit"),
        ({"limit": "ten"}, "invalid_limit", "limit"),
        ({"limit": "1.5"}, "invalid_limit", "limit"),
        ({"limit": "9" * 5000}, "invalid_limit", "limit"),
        ({"status": "done"}, "invalid_status", "status"),
        ({"status": ""}, "invalid_status", "status"),
        ({"limit": ""}, "invalid_limit", "limit"),
        ({"wa_id": ""}, "invalid_field", "wa_id"),
        ({"cursor": ""}, "invalid_cursor", "cursor"),
        ({"status": "PENDING"}, "invalid_status", "status"),
        ({"event_name": "Lead"}, "invalid_event_name", "event_name"),
        ({"source": "webhook"}, "invalid_field", "source"),
        ({"wa_id": "1\x002"}, "invalid_field", "wa_id"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor", "cursor"),
        ({"cursor": "%%%"}, "invalid_cursor", "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"12").decode()}, "invalid_cursor", "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"c1:0").decode()}, "invalid_cursor", "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"c1:-4").decode()}, "invalid_cursor", "cursor"),
        (
            {"cursor": base64.urlsafe_b64encode(b"c1:" + b"9" * 20).decode()},
            "invalid_cursor",
            "cursor",
        ),
        ({"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "invalid_cursor", "cursor"),
    ],
    ids=[
        "limit-above-max",
        "limit-0",
        "limit-negative",
        "limit-word",
        "limit-fraction",
        "limit-huge",
        "status-unknown",
        "status-empty",
        "limit-empty",
        "wa-id-empty",
        "cursor-empty",
        "status-case",
        "event-name",
        "source",
        "wa-id-nul",
        "cursor-garbage",
        "cursor-not-base64",
        "cursor-no-prefix",
        "cursor-zero",
        "cursor-negative",
        "cursor-huge",
        "cursor-binary",
    ],
)
def test_bad_queries_are_400_naming_the_parameter(
    admin: Admin, clicked: str, query: dict[str, Any], code: str, field: str
) -> None:
    r = admin.get("/admin/conversions", **query)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == code
    assert r.json["error"]["field"] == field
    assert field in r.json["error"]["message"]


def test_cursor_is_opaque_but_stable() -> None:
    assert encode_cursor(42) == encode_cursor(42)
    assert "42" not in encode_cursor(42)


def test_get_one_conversion(admin: Admin, services: Services, clicked: str) -> None:
    [conversion_id] = add_conversions(services, WA_ID, 1)
    r = admin.get(f"/admin/conversions/{conversion_id}")
    assert r.status_code == 200
    assert r.json["id"] == conversion_id
    assert set(r.json) == ITEM_KEYS | {"sent_event", "requests"}
    assert (r.json["sent_event"], r.json["requests"]) == (None, [])  # never sent


@pytest.mark.parametrize("path", ["12345", "0", str(2**63), "9" * 40, "abc", "-1", "1.5"])
def test_unknown_conversion_is_404(admin: Admin, clicked: str, path: str) -> None:
    r = admin.get(f"/admin/conversions/{path}")
    assert r.status_code == 404
    assert set(r.json["error"]) >= {"code", "message"}


def test_unknown_query_parameters_are_400(admin: Admin, clicked: str) -> None:
    # A misspelt filter must not silently list everything.
    r = admin.get("/admin/conversions", stauts="failed")
    assert r.status_code == 400
    assert r.json["error"]["code"] == "unknown_parameter"
    assert "'stauts'" in r.json["error"]["message"]
    assert admin.get("/admin/conversions/1", verbose="1").status_code == 400
