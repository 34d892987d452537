"""The request log: one row per HTTP request that carried events, linked to its conversions.

The dispatcher calls :func:`record_request` once per request (Graph or Gateway, answered or
not), except for a Graph request Meta accepted: ``queue.mark_sent`` writes its row with the
outcome, and each of its conversions keeps the row's id (``sent_request_id``) instead of a
link row. The admin API reads the log back. ``sent_event`` is rebuilt, not stored: see
:func:`sent_event`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from waconv.accounts import registry
from waconv.clock import isoformat
from waconv.config import Settings
from waconv.conversions.events import build_meta_event
from waconv.db import id_list
from waconv.models import Conversion, DispatchRequest, DispatchRequestConversion


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one request was and what came back; None where it does not apply (no answer, no
    error)."""

    at: datetime  # when it was sent (aware UTC)
    waba_id: str
    destination: str  # DispatchRequest.GRAPH or DispatchRequest.GATEWAY
    events: int
    bytes: int  # of the request body
    duration_ms: int
    http_status: int | None = None  # None: no answer (network failure, timeout)
    events_received: int | None = None
    fbtrace_id: str | None = None
    messages: list[Any] | None = None  # Meta's ``messages`` of the answer
    error_code: int | None = None
    error_subcode: int | None = None
    error_message: str | None = None


REQUEST_FIELDS = tuple(RequestRecord.__dataclass_fields__)

# The links of one request in one statement, the ids given as one text parameter
# (waconv.db.id_list).
_LINK_SQL = {
    "sqlite": (
        "INSERT INTO dispatch_request_conversions (request_id, conversion_id)"
        " SELECT :request_id, value FROM json_each(:ids)"
    ),
    "postgresql": (
        "INSERT INTO dispatch_request_conversions (request_id, conversion_id)"
        " SELECT :request_id, unnest(CAST(:ids AS bigint[]))"
    ),
}
_LINK_STATEMENTS = {dialect: text(sql) for dialect, sql in _LINK_SQL.items()}
_INSERT_REQUEST = insert(DispatchRequest).returning(DispatchRequest.id)


def record_request(
    conn_or_session: Connection | Session,
    record: RequestRecord,
    conversion_ids: Sequence[int],
) -> int:
    """Store one request and link it to the conversions it carried; the request's id.

    Two statements whatever the batch size. Runs in the caller's transaction (only flushes).
    ``conversion_ids`` must be distinct, as the events of one request are.
    """
    if record.destination not in DispatchRequest.DESTINATIONS:
        raise ValueError(f"unknown destination {record.destination!r}")
    conn = conn_or_session.connection() if isinstance(conn_or_session, Session) else conn_or_session
    values = {name: getattr(record, name) for name in REQUEST_FIELDS}
    if values["messages"] is None:
        # Left out, the column is SQL NULL; given as None, JSON would store the value null.
        del values["messages"]
    request_id = int(conn.execute(_INSERT_REQUEST, values).scalar_one())
    if conversion_ids:
        dialect = conn.dialect.name
        conn.execute(
            _LINK_STATEMENTS[dialect],
            {"request_id": request_id, "ids": id_list(conversion_ids, dialect)},
        )
    return request_id


# --- reading it back ----------------------------------------------------------------------------


def requests_of(session: Session, conversion_id: int) -> list[DispatchRequest]:
    """The requests that carried the conversion, newest first: those linked to it, and the
    one that delivered it (``Conversion.sent_request_id``)."""
    linked = select(DispatchRequestConversion.request_id).where(
        DispatchRequestConversion.conversion_id == conversion_id
    )
    delivered = select(Conversion.sent_request_id).where(
        Conversion.id == conversion_id, Conversion.sent_request_id.is_not(None)
    )
    return list(
        session.scalars(
            select(DispatchRequest)
            .where(DispatchRequest.id.in_(linked.union_all(delivered)))
            .order_by(DispatchRequest.id.desc())
        )
    )


def list_requests(
    session: Session, *, limit: int, before_id: int | None = None
) -> tuple[list[DispatchRequest], bool]:
    """Up to ``limit`` requests, newest first, with ids below ``before_id``; and whether more
    follow."""
    stmt = select(DispatchRequest)
    if before_id is not None:
        stmt = stmt.where(DispatchRequest.id < before_id)
    rows = list(session.scalars(stmt.order_by(DispatchRequest.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def request_to_dict(request: DispatchRequest) -> dict[str, Any]:
    """A request record as the admin API shows it (the contract's shape)."""
    return {
        "id": request.id,
        "at": isoformat(request.at),
        "waba_id": request.waba_id,
        "destination": request.destination,
        "events": request.events,
        "bytes": request.bytes,
        "http_status": request.http_status,
        "duration_ms": request.duration_ms,
        "events_received": request.events_received,
        "fbtrace_id": request.fbtrace_id,
        "messages": request.messages,
        "error_code": request.error_code,
        "error_subcode": request.error_subcode,
        "error_message": request.error_message,
    }


def sent_event(
    session: Session, conversion: Conversion, settings: Settings, *, carried: bool
) -> dict[str, Any] | None:
    """The event JSON the conversion went out as, or None if it never went out.

    Rebuilt with the dispatcher's own builder from what is stored, instead of stored per send
    (a copy of every event in the database): every input is fixed when the conversion is
    recorded, except the account's Limited Data Use setting, which is read as it is now.
    ``carried``: a request in the log carried it (older sends show in ``sent_at`` and
    ``attempts``).
    """
    if not (carried or conversion.sent_at is not None or conversion.attempts > 0):
        return None
    account = registry.get_account(session, conversion.waba_id)
    ldu = registry.ldu_of(account, settings)
    return build_meta_event(
        event_name=conversion.event_name,
        event_time=conversion.event_time,
        event_id=conversion.event_id,
        waba_id=conversion.waba_id,
        ctwa_clid=conversion.ctwa_clid,
        custom_data=conversion.custom_data,
        extra=conversion.extra,
        ldu=ldu.ldu,
        ldu_country=ldu.country,
        ldu_state=ldu.state,
    )
