"""The request log: record_request as the dispatcher calls it, GET /admin/requests, and the
requests and sent event of GET /admin/conversions/<id>."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import event, select

from tests.admin.conftest import Admin, set_conversion
from tests.conftest import WABA_ID
from tests.webhooks.helpers import rows
from waconv.accounts import registry
from waconv.admin.service import encode_cursor
from waconv.clock import utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.conversions.requestlog import RequestRecord, record_request
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion, DispatchRequest, DispatchRequestConversion
from waconv.services import Services

RECORD_KEYS = {
    "id",
    "at",
    "waba_id",
    "destination",
    "events",
    "bytes",
    "http_status",
    "duration_ms",
    "events_received",
    "fbtrace_id",
    "messages",
    "error_code",
    "error_subcode",
    "error_message",
}


def mark(admin: Admin, wa_id: str, n: int, **body: Any) -> list[int]:
    ids = []
    for i in range(n):
        r = admin.mark(
            wa_id=wa_id,
            event_name="Purchase",
            order_id=f"R-{i}",
            custom_data={
                "value": 10 + i,
                "currency": "USD",
                "contents": [{"id": "sku", "quantity": 2}],
            },
            **body,
        )
        assert r.status_code == 202, r.json
        ids.append(int(r.json["id"]))
    return ids


def record(services: Services, conversion_ids: list[int], **values: Any) -> int:
    fields: dict[str, Any] = {
        "at": utcnow(),
        "waba_id": WABA_ID,
        "destination": "graph",
        "events": len(conversion_ids),
        "bytes": 100 * len(conversion_ids),
        "http_status": 200,
        "duration_ms": 42,
        "events_received": len(conversion_ids),
        "fbtrace_id": "AbCdEf123",
        "messages": [],
        **values,
    }
    with services.db.transaction() as session:
        return record_request(session, RequestRecord(**fields), conversion_ids)


@pytest.mark.parametrize("ldu", [False, True], ids=["no-ldu", "ldu"])
def test_the_dispatchers_request_shows_in_the_admin_answers(
    admin: Admin, services: Services, fake_graph: FakeGraph, clicked: str, ldu: bool
) -> None:
    """Send for real: the dispatcher records the request from what Meta got and answered,
    the admin answers show it, and sent_event is the very event Meta received (Limited Data
    Use included)."""
    ids = mark(admin, clicked, 3)
    if ldu:
        with services.db.transaction() as session:
            account = registry.get_account(session, WABA_ID)
            assert account is not None
            account.ldu, account.ldu_country, account.ldu_state = True, 1, 1000
    Dispatcher(services).run_once()
    [sent] = fake_graph.events_requests()
    assert sent["status"] == 200
    events = sent["json"]["data"]
    assert ("data_processing_options" in events[0]) is ldu
    by_event_id = {c.event_id: c.id for c in rows(services, Conversion)}
    carried = [by_event_id[e["event_id"]] for e in events]
    assert sorted(carried) == sorted(ids)
    page = admin.get("/admin/requests").json
    assert page["next_cursor"] is None
    [logged] = page["items"]  # the dispatcher recorded its request
    expected = {
        **logged,
        "waba_id": WABA_ID,
        "destination": "graph",
        "events": 3,
        "bytes": int(sent["headers"]["Content-Length"]),  # the body Meta got
        "http_status": 200,
        "events_received": 3,
        "error_code": None,
        "error_subcode": None,
        "error_message": None,
    }
    assert logged == expected
    assert logged["fbtrace_id"] and logged["duration_ms"] >= 0
    for meta_event in events:
        r = admin.get(f"/admin/conversions/{by_event_id[meta_event['event_id']]}")
        assert r.status_code == 200
        assert r.json["status"] == "sent"
        assert r.json["requests"] == [expected]
        assert r.json["sent_event"] == meta_event  # exactly what Meta received


def links(services: Services) -> list[tuple[int, int]]:
    """(conversion id, request id) of every link row."""
    link = DispatchRequestConversion
    with services.db.transaction() as session:
        found = session.execute(select(link.conversion_id, link.request_id)).all()
    return sorted((conversion_id, request_id) for conversion_id, request_id in found)


def test_the_request_meta_took_is_written_with_its_outcome(
    admin: Admin, services: Services, fake_graph: FakeGraph, clicked: str
) -> None:
    """A refused request is linked to its events by link rows; the one Meta took is written
    with the events' sent outcome, and each keeps its id instead of a link row (the hot path's
    one write per batch). The conversion shows both, newest first."""
    ids = mark(admin, clicked, 2)
    fake_graph.fail_next(1, "http500")
    Dispatcher(services).run_once()
    for conversion_id in ids:
        set_conversion(services, conversion_id, next_attempt_at=utcnow())
    Dispatcher(services).run_once()

    refused, accepted = [r.id for r in rows(services, DispatchRequest)]
    assert links(services) == [(conversion_id, refused) for conversion_id in sorted(ids)]
    for conversion in rows(services, Conversion):
        assert (conversion.status, conversion.sent_request_id) == (Conversion.SENT, accepted)
    answer = admin.get(f"/admin/conversions/{ids[0]}").json
    assert [(r["id"], r["http_status"]) for r in answer["requests"]] == [
        (accepted, 200),
        (refused, 500),
    ]
    assert answer["requests"][0]["events_received"] == 2


def test_events_meta_took_are_marked_sent_when_the_request_log_cannot_be_written(
    admin: Admin,
    services: Services,
    fake_graph: FakeGraph,
    clicked: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log is kept with the outcome, but never at its cost: events left pending would go
    to Meta again."""
    ids = mark(admin, clicked, 2)
    with services.db.autocommit_cursor() as cursor:
        cursor.execute("ALTER TABLE dispatch_requests RENAME TO dispatch_requests_away")
    try:
        stats = Dispatcher(services).run_once()
    finally:
        with services.db.autocommit_cursor() as cursor:
            cursor.execute("ALTER TABLE dispatch_requests_away RENAME TO dispatch_requests")
    assert stats.sent == 2
    assert len(fake_graph.events_requests()) == 1
    for conversion in rows(services, Conversion):
        assert (conversion.status, conversion.sent_request_id) == (Conversion.SENT, None)
    assert "dispatcher.request_log_failed" in caplog.text
    assert admin.get(f"/admin/conversions/{ids[0]}").json["requests"] == []


def test_a_conversions_requests_come_newest_first_with_metas_words(
    admin: Admin, services: Services, clicked: str
) -> None:
    [mine, other] = mark(admin, clicked, 2)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    with freeze_time(start):
        network = record(
            services,
            [mine, other],
            http_status=None,
            events_received=None,
            fbtrace_id=None,
            messages=None,
            duration_ms=30000,
            error_message="no answer from Meta within 30 s",
        )
    with freeze_time(start + timedelta(seconds=10)):
        refused = record(
            services,
            [mine],
            http_status=400,
            events_received=None,
            error_code=100,
            error_subcode=2804050,
            error_message="Invalid parameter",
        )
    with freeze_time(start + timedelta(seconds=20)):
        record(services, [other])

    answer = admin.get(f"/admin/conversions/{mine}").json
    assert [r["id"] for r in answer["requests"]] == [refused, network]
    newest, oldest = answer["requests"]
    assert set(newest) == RECORD_KEYS
    assert newest["at"] == "2026-01-05T09:00:10Z"
    assert (newest["http_status"], newest["error_code"], newest["error_subcode"]) == (
        400,
        100,
        2804050,
    )
    assert newest["error_message"] == "Invalid parameter"
    assert oldest["http_status"] is None  # no answer at all
    assert oldest["events_received"] is None
    assert oldest["messages"] is None
    assert oldest["events"] == 2
    # Carried, so sent_event shows what went out, though Meta never took it.
    assert answer["sent_event"]["event_id"] == answer["event_id"]


def test_a_conversion_never_sent_has_no_sent_event_and_no_requests(
    admin: Admin, services: Services, clicked: str
) -> None:
    [conversion_id] = mark(admin, clicked, 1)
    answer = admin.get(f"/admin/conversions/{conversion_id}").json
    assert answer["sent_event"] is None
    assert answer["requests"] == []


def test_a_conversion_sent_before_the_log_existed_still_shows_its_event(
    admin: Admin, services: Services, clicked: str
) -> None:
    [conversion_id] = mark(admin, clicked, 1)
    set_conversion(services, conversion_id, status=Conversion.SENT, attempts=1, sent_at=utcnow())
    answer = admin.get(f"/admin/conversions/{conversion_id}").json
    assert answer["requests"] == []
    assert answer["sent_event"]["custom_data"] == {
        "value": 10,
        "currency": "USD",
        "contents": [{"id": "sku", "quantity": 2}],
        "order_id": "R-0",
    }


def test_requests_are_listed_newest_first_a_page_at_a_time(
    admin: Admin, services: Services, clicked: str
) -> None:
    [conversion_id] = mark(admin, clicked, 1)
    recorded = [record(services, [conversion_id], duration_ms=n) for n in range(5)]

    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        r = admin.get("/admin/requests", **query)
        assert r.status_code == 200
        assert len(r.json["items"]) <= 2
        seen += [item["id"] for item in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(recorded, reverse=True)
    assert len(admin.get("/admin/requests").json["items"]) == 5  # default limit 100
    after = admin.get("/admin/requests", cursor=encode_cursor(recorded[2])).json
    assert [i["id"] for i in after["items"]] == recorded[:2][::-1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"waba_id": "1"}, "waba_id"),
    ],
)
def test_bad_request_queries_are_400(
    admin: Admin, clicked: str, query: dict[str, str], field: str
) -> None:
    r = admin.get("/admin/requests", **query)
    assert r.status_code == 400
    assert r.json["error"]["field"] == field


def test_the_largest_page_is_1000(admin: Admin, clicked: str) -> None:
    assert admin.get("/admin/requests", limit=1000).status_code == 200


@pytest.fixture
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(services.db.engine, "before_cursor_execute", count)
    yield seen
    event.remove(services.db.engine, "before_cursor_execute", count)


def test_record_request_links_a_full_batch_in_two_statements(
    admin: Admin, services: Services, clicked: str, statements: list[str]
) -> None:
    """1,000 events a request: the links go in one set-based statement, not 1,000."""
    [first] = mark(admin, clicked, 1)
    with services.db.transaction() as session:
        conversation_id = session.scalar(select(Conversion.conversation_id))
        template = session.get(Conversion, first)
        assert template is not None
        for n in range(999):
            session.add(
                Conversion(
                    event_id=f"bulk-{n}",
                    waba_id=WABA_ID,
                    conversation_id=conversation_id,
                    ctwa_clid=template.ctwa_clid,
                    event_name="Purchase",
                    event_time=template.event_time,
                    source="admin",
                )
            )
    ids = [c.id for c in rows(services, Conversion)]
    assert len(ids) == 1000
    statements.clear()

    request_id = record(services, ids)

    writes = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(writes) == 2, writes
    with services.db.transaction() as session:
        linked = session.scalars(
            select(DispatchRequestConversion.conversion_id).where(
                DispatchRequestConversion.request_id == request_id
            )
        ).all()
    assert sorted(linked) == sorted(ids)


def test_record_request_refuses_an_unknown_destination(
    admin: Admin, services: Services, clicked: str
) -> None:
    [conversion_id] = mark(admin, clicked, 1)
    with pytest.raises(ValueError, match="destination"):
        record(services, [conversion_id], destination="carrier-pigeon")
    assert rows(services, DispatchRequest) == []
