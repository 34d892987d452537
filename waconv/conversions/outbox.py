"""Enqueue: the one way a conversion enters the outbox, used by rules, the admin API and the CLI.

It validates first (Meta refuses a whole batch for one bad event), then writes in the caller's
transaction, so the decision and its outbox row commit together. The ``event_id`` is derived from
what identifies the conversion; a second request for the same conversion finds the first row.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.conversions.events import (
    MAX_EVENT_AGE,
    InvalidConversion,
    validate_conversion,
    validate_custom_data,
    validate_event_name,
)
from waconv.customers.store import with_customer_info
from waconv.db import insert_object_or_ignore
from waconv.models import Conversion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enqueued:
    conversion: Conversion
    created: bool


def enqueue(
    session: Session,
    *,
    event_id: str,
    waba_id: str,
    ctwa_clid: str,
    event_name: str,
    event_time: datetime,
    source: str,
    custom_data: dict[str, Any] | None = None,
    conversation_id: int | None = None,
    rule_name: str | None = None,
    order_id: str | None = None,
    extra: dict[str, Any] | None = None,
    expire_if_stale: bool = False,
) -> Enqueued:
    """Validate and add one conversion; return the existing row if its event_id is known.

    ``expire_if_stale``: for conversions decided from old messages (a webhook redelivered after
    an outage), an ``event_time`` past Meta's 7-day limit is recorded as ``expired`` with the
    reason instead of refused, so the operator can see what could not be reported.
    """
    try:
        values = conversion_values(
            session,
            event_id=event_id,
            waba_id=waba_id,
            ctwa_clid=ctwa_clid,
            event_name=event_name,
            event_time=event_time,
            source=source,
            custom_data=custom_data,
            conversation_id=conversation_id,
            rule_name=rule_name,
            order_id=order_id,
            extra=extra,
            expire_if_stale=expire_if_stale,
        )
    except InvalidConversion:
        existing = _existing(session, event_id)  # asked again, when it no longer validates
        if existing is not None:
            return Enqueued(existing, created=False)
        raise
    event_name, status = values["event_name"], values["status"]
    row = insert_object_or_ignore(session, Conversion, values)
    if row is None:  # known event_id: the first request's row stands
        existing = _existing(session, event_id)
        assert existing is not None
        return Enqueued(existing, created=False)
    log.info(
        "conversion.enqueued id=%s event_id=%s event_name=%s source=%s status=%s",
        row.id,
        event_id,
        event_name,
        source,
        status,
    )
    return Enqueued(row, created=True)


def conversion_values(
    session: Session,
    *,
    event_id: str,
    waba_id: str,
    ctwa_clid: str,
    event_name: str,
    event_time: datetime,
    source: str,
    custom_data: dict[str, Any] | None = None,
    conversation_id: int | None = None,
    rule_name: str | None = None,
    order_id: str | None = None,
    extra: dict[str, Any] | None = None,
    expire_if_stale: bool = False,
) -> dict[str, Any]:
    """The outbox row of one conversion, validated (see ``enqueue``); raises
    InvalidConversion. For callers that insert many at once (``enqueue_many``)."""
    now = utcnow()
    status, reason = Conversion.PENDING, None
    if expire_if_stale and event_time < now - MAX_EVENT_AGE:
        validate_event_name(event_name)
        custom_data = validate_custom_data(event_name, custom_data)
        status = Conversion.EXPIRED
        reason = (
            f"event_time {event_time.isoformat()} was already more than 7 days old when "
            "the conversion was decided; Meta refuses such events"
        )
    else:
        event_time, custom_data = validate_conversion(event_name, event_time, custom_data, now)
    extra = with_customer_info(session, conversation_id, extra)
    return {
        "event_id": event_id,
        "waba_id": waba_id,
        "conversation_id": conversation_id,
        "ctwa_clid": ctwa_clid,
        "event_name": event_name,
        "event_time": event_time,
        "custom_data": custom_data,
        "extra": extra,
        "source": source,
        "rule_name": rule_name,
        "order_id": order_id,
        "status": status,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": reason,
    }


def enqueue_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert rows made by ``conversion_values`` in one statement; an event_id already
    known keeps its first row, as in ``enqueue``."""
    if not rows:
        return
    connection = session.connection()
    inserted = connection.execute(_insert_many(connection.dialect.name), rows)
    statuses = {row["event_id"]: row for row in rows}
    for new_id, event_id in inserted:
        row = statuses[event_id]
        log.info(
            "conversion.enqueued id=%s event_id=%s event_name=%s source=%s status=%s",
            new_id,
            event_id,
            row["event_name"],
            row["source"],
            row["status"],
        )


@functools.cache
def _insert_many(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(Conversion).on_conflict_do_nothing().returning(Conversion.id, Conversion.event_id)


def _existing(session: Session, event_id: str) -> Conversion | None:
    return session.scalar(select(Conversion).where(Conversion.event_id == event_id))


__all__ = ["Enqueued", "InvalidConversion", "conversion_values", "enqueue", "enqueue_many"]
