"""Helpers of the dispatcher tests: fill the outbox fast, read it back."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from tests.conftest import DATASET_ID, WABA_ID
from waconv.accounts import registry
from waconv.clock import utcnow
from waconv.conversions.events import validate_conversion
from waconv.conversions.outbox import enqueue
from waconv.models import Account, Conversion
from waconv.services import Services

PURCHASE = {"value": 23.97, "currency": "USD"}
INSERT_CHUNK = 1000  # rows per INSERT statement


def clid(prefix: str, n: int) -> str:
    return f"ARclid-{prefix}-{n:06d}"


def event_id(prefix: str, n: int) -> str:
    return f"{prefix}-{n:06d}"


def setup_account(
    services: Services, waba_id: str = WABA_ID, dataset_id: str | None = DATASET_ID
) -> None:
    with services.db.transaction() as session:
        registry.get_or_create_account(session, waba_id).dataset_id = dataset_id


def enqueue_many(
    services: Services,
    n: int,
    *,
    prefix: str = "evt",
    waba_id: str = WABA_ID,
    event_time: datetime | None = None,
    event_name: str = "Purchase",
    custom_data: dict[str, Any] | None = PURCHASE,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """``n`` pending conversions in one transaction; their event_ids, in id order.

    Each is validated as ``enqueue`` validates, then all are inserted with one multi-row
    INSERT of the columns ``enqueue`` writes (``enqueue`` itself costs three round trips and
    a log line per event: too slow for thousands). ``event_time`` defaults to an hour ago;
    every event gets its own ctwa_clid.
    """
    now = utcnow()
    moment, data = validate_conversion(
        event_name, event_time or now - timedelta(hours=1), custom_data, now
    )
    ids = [event_id(prefix, i) for i in range(n)]
    rows = [
        {
            "event_id": eid,
            "waba_id": waba_id,
            "conversation_id": None,
            "ctwa_clid": clid(prefix, i),
            "event_name": event_name,
            "event_time": moment,
            "custom_data": data,
            "extra": extra,
            "source": "admin",
            "rule_name": None,
            "order_id": None,
            "status": Conversion.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
        }
        for i, eid in enumerate(ids)
    ]
    with services.db.transaction() as session:
        registry.get_or_create_account(session, waba_id)
        for start in range(0, n, INSERT_CHUNK):
            session.execute(insert(Conversion), rows[start : start + INSERT_CHUNK])
    return ids


def enqueue_one(
    services: Services,
    eid: str,
    *,
    event_time: datetime | None = None,
    waba_id: str = WABA_ID,
    ctwa_clid: str | None = None,
) -> Conversion:
    """One Purchase through the real ``enqueue`` (admin API and rules use it)."""
    with services.db.transaction() as session:
        registry.get_or_create_account(session, waba_id)
        result = enqueue(
            session,
            event_id=eid,
            waba_id=waba_id,
            ctwa_clid=ctwa_clid or f"ARclid-{eid}",
            event_name="Purchase",
            event_time=event_time or utcnow() - timedelta(hours=1),
            source="admin",
            custom_data=PURCHASE,
        )
        assert result.created, eid
        return result.conversion


def conversions(services: Services, *where: Any) -> list[Conversion]:
    with services.db.transaction() as session:
        return list(session.scalars(select(Conversion).where(*where).order_by(Conversion.id)).all())


def by_event_id(services: Services) -> dict[str, Conversion]:
    return {c.event_id: c for c in conversions(services)}


def one(services: Services, eid: str) -> Conversion:
    found = conversions(services, Conversion.event_id == eid)
    assert len(found) == 1, eid
    return found[0]


def status_counts(services: Services) -> collections.Counter[str]:
    return collections.Counter(c.status for c in conversions(services))


def account(services: Services, waba_id: str = WABA_ID) -> Account:
    with services.db.transaction() as session:
        found = registry.get_account(session, waba_id)
        assert found is not None
        return found


def assert_released(services: Services, waba_id: str = WABA_ID) -> None:
    """No dispatcher holds the account any more: its turn ended and gave the lease back."""
    held = account(services, waba_id)
    assert (held.dispatch_token, held.dispatch_leased_until) == (None, None)


def sent_event_ids(requests: list[dict[str, Any]]) -> list[str]:
    """event_ids of every events request the fake saw (accepted or not), in order."""
    return [e["event_id"] for r in requests for e in (r["json"] or {}).get("data", [])]
