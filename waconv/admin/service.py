"""What the admin API and the ``waconv conversions`` commands do, shared by both.

Views and commands parse their input into the request shapes here (the same validation for a
JSON body and for command-line options), call one function inside the transaction they own,
and shape the answer. Functions here only ``flush()``. Every refusal is an ``APIError`` with a
status, a stable code and a sentence naming the field, which the JSON error handler renders
and the CLI prints as one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from waconv.accounts import registry
from waconv.clock import from_unix, isoformat, utcnow
from waconv.config import ConfigError, Settings
from waconv.conversations import store
from waconv.conversions import requestlog
from waconv.conversions.destinations import GRAPH, Routing
from waconv.conversions.events import (
    MAX_EVENT_AGE,
    InvalidConversion,
    event_id_for,
    json_type,
    validate_custom_data,
    validate_event_name,
    validate_event_time,
)
from waconv.conversions.outbox import enqueue
from waconv.conversions.schedule import SEND_MARGIN
from waconv.errors import APIError
from waconv.models import Account, Conversation, Conversion

# Page sizes of GET /admin/conversions: a page is one query and one JSON document; 1,000 rows
# keep both well under a second and a few MB, and match Meta's batch size.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Ids are BIGINT on PostgreSQL and INTEGER (64-bit) on SQLite: larger numbers cannot name a row,
# and SQLite cannot even bind them.
MAX_ID = 2**63 - 1
# Unix seconds up to 9999-12-31T23:59:59Z; beyond it Python's datetime overflows.
MAX_UNIX_SECONDS = 253_402_300_799
MAX_ORDER_ID = 255  # Conversion.order_id is VARCHAR(255)
MAX_IDENTIFIER = 255  # wa_id, user_id, phone_number_id: far longer than Meta's ids
MAX_JSON_DEPTH = 32  # custom_data nesting; Meta's own parameters are at most 3 deep
# custom_data as compact JSON: Meta's own parameters take a few hundred bytes, and one event is
# a share of a request body 1,000 events must fit in.
MAX_CUSTOM_DATA_BYTES = 64 * 1024
# An event marked with less time than this before Meta's 7-day limit could expire while it
# waits for its account's turn or a retry: refused now rather than accepted and then expired.
MIN_TIME_LEFT = timedelta(minutes=10)
EVENT_ID_PREFIX = "adm."  # admin-marked conversions are recognisable in Meta's Events Manager
CURSOR_PREFIX = "c1:"  # versions the cursor format, so it can change without misreading old ones

MARK_FIELDS = frozenset(
    {"wa_id", "user_id", "event_name", "custom_data", "event_time", "order_id", "phone_number_id"}
)
# Conversions marked through the mark path: by an operator, or by a connector (waconv.connectors).
MARKED_SOURCES = ("admin", "shopify", "connector")
SOURCES = frozenset({"rule", "automatic_event", *MARKED_SOURCES})
LIST_PARAMETERS = ("status", "limit", "cursor", "event_name", "source", "wa_id", "user_id")


def bad_request(code: str, field: str, message: str) -> APIError:
    return APIError(400, code, message, field=field)


# --- checks of operator input -----------------------------------------------------------------


def clean_text(field: str, value: object, *, max_length: int = MAX_IDENTIFIER) -> str:
    """A non-empty string the database can store: no NUL, valid Unicode, not too long.

    PostgreSQL refuses NUL in text and jsonb; neither database can encode a lone surrogate
    (JSON allows ``"\\ud800"``). Refused here, they are a 400 instead of a 500.
    """
    if not isinstance(value, str):
        kind = json_type(value)
        raise bad_request("invalid_field", field, f"{field} must be a string, not {kind}")
    if not value:
        raise bad_request("invalid_field", field, f"{field} must not be empty")
    if len(value) > max_length:
        raise bad_request("invalid_field", field, f"{field} is longer than {max_length} characters")
    _storable(field, value)
    return value


def _storable(field: str, value: str) -> None:
    if "\x00" in value:
        raise bad_request("invalid_field", field, f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            "invalid_field", field, f"{field} must be valid Unicode (it has a lone surrogate)"
        ) from None


def check_json_document(field: str, value: object, depth: int = 0) -> None:
    """A JSON value both databases store as given: storable strings, finite numbers, bounded."""
    if depth > MAX_JSON_DEPTH:
        raise bad_request(
            "invalid_custom_data", field, f"{field} is nested more than {MAX_JSON_DEPTH} deep"
        )
    if isinstance(value, str):
        _storable(field, value)
    elif isinstance(value, float) and not math.isfinite(value):
        # json.loads reads 1e400 as infinity, which no database stores as JSON.
        raise bad_request("invalid_custom_data", field, f"{field} must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(f"{field} key", key)
            check_json_document(f"{field}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_document(f"{field}[{i}]", item, depth + 1)


def _invalid_conversion(exc: InvalidConversion) -> APIError:
    head = exc.field.split(".", 1)[0].split("[", 1)[0]
    code = {
        "event_name": "invalid_event_name",
        "event_time": "invalid_event_time",
        "custom_data": "invalid_custom_data",
    }.get(head, "invalid_field")
    return bad_request(code, exc.field, exc.message)


# --- mark a conversion --------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkRequest:
    """A checked ``POST /admin/conversions`` body (or ``waconv conversions mark``)."""

    user_field: str  # "wa_id" or "user_id": which identifier the caller gave
    user: str
    event_name: str
    custom_data: dict[str, Any] | None
    event_time: datetime | None  # None: now
    order_id: str | None
    phone_number_id: str | None

    @classmethod
    def from_json(cls, body: object) -> MarkRequest:
        """Check the body's shape and types; 400 with the field named otherwise."""
        if not isinstance(body, dict):
            raise bad_request(
                "invalid_body", "body", f"the body must be a JSON object, not {json_type(body)}"
            )
        unknown = sorted(str(key) for key in body if key not in MARK_FIELDS)
        if unknown:
            raise bad_request(
                "unknown_field",
                unknown[0],
                f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(MARK_FIELDS))}",
            )
        given = [key for key in ("wa_id", "user_id") if body.get(key) is not None]
        if not given:
            raise bad_request(
                "missing_field",
                "wa_id",
                "wa_id (or user_id, for users whose number is withheld) is required",
            )
        if len(given) > 1:
            raise bad_request("invalid_field", "user_id", "give either wa_id or user_id, not both")
        user_field = given[0]
        user = clean_text(user_field, body[user_field])

        if body.get("event_name") is None:
            raise bad_request(
                "missing_field", "event_name", "event_name is required (e.g. 'Purchase')"
            )
        try:
            event_name = validate_event_name(body["event_name"])
        except InvalidConversion as exc:
            raise _invalid_conversion(exc) from None

        order_id = None
        if body.get("order_id") is not None:
            order_id = clean_text("order_id", body["order_id"], max_length=MAX_ORDER_ID)
            _no_control_characters("order_id", order_id)

        custom_data = body.get("custom_data")
        if custom_data is not None:
            check_json_document("custom_data", custom_data)
            size = len(json.dumps(custom_data, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_CUSTOM_DATA_BYTES:
                raise bad_request(
                    "invalid_custom_data",
                    "custom_data",
                    f"custom_data is {size} bytes as JSON; at most {MAX_CUSTOM_DATA_BYTES}",
                )
        try:
            checked = validate_custom_data(event_name, custom_data)
        except InvalidConversion as exc:
            raise _invalid_conversion(exc) from None
        custom_data, order_id = _merge_order_id(checked, order_id)

        event_time = None
        if body.get("event_time") is not None:
            event_time = _unix_seconds("event_time", body["event_time"])
            now = utcnow()
            try:
                # An operator's time ahead of now is a mistake, not a clock's drift.
                validate_event_time(event_time, now, future_skew=timedelta(0))
            except InvalidConversion as exc:
                raise _invalid_conversion(exc) from None
            if event_time < now - MAX_EVENT_AGE + MIN_TIME_LEFT:
                raise bad_request(
                    "invalid_event_time",
                    "event_time",
                    f"event_time {isoformat(event_time)} reaches Meta's {MAX_EVENT_AGE.days}-day "
                    f"limit in less than {MIN_TIME_LEFT.seconds // 60} minutes; it could not be "
                    "sent in time",
                )

        phone_number_id = None
        if body.get("phone_number_id") is not None:
            phone_number_id = clean_text("phone_number_id", body["phone_number_id"])

        return cls(
            user_field=user_field,
            user=user,
            event_name=event_name,
            custom_data=custom_data,
            event_time=event_time,
            order_id=order_id,
            phone_number_id=phone_number_id,
        )


def _no_control_characters(field: str, value: str) -> None:
    # An order id is part of the event id; control characters (the id's separator among them)
    # are never part of a real order number.
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise bad_request("invalid_field", field, f"{field} must not contain control characters")


def _merge_order_id(
    custom_data: dict[str, Any] | None, order_id: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """``order_id`` goes into custom_data; a custom_data.order_id alone is the order id."""
    inner = custom_data.get("order_id") if custom_data else None
    if order_id is None:
        if inner is not None:
            _no_control_characters("custom_data.order_id", inner)
            if len(inner) > MAX_ORDER_ID:
                raise bad_request(
                    "invalid_custom_data",
                    "custom_data.order_id",
                    f"custom_data.order_id is longer than {MAX_ORDER_ID} characters",
                )
        return custom_data, inner
    if inner is not None and inner != order_id:
        raise bad_request(
            "invalid_field",
            "order_id",
            f"order_id {order_id!r} differs from custom_data.order_id {inner!r}; give one",
        )
    merged = dict(custom_data or {})
    merged["order_id"] = order_id
    return merged, order_id


def _unix_seconds(field: str, value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(
            "invalid_event_time",
            field,
            f"{field} must be an integer of unix seconds, not {json_type(value)}",
        )
    if not 0 <= value <= MAX_UNIX_SECONDS:
        hint = (
            "; it looks like milliseconds, and event_time is in seconds"
            if MAX_UNIX_SECONDS < value <= MAX_UNIX_SECONDS * 1000
            else ""
        )
        raise bad_request(
            "invalid_event_time", field, f"{field} {value} is not a plausible unix time{hint}"
        )
    return from_unix(value)


@dataclass(frozen=True)
class Marked:
    conversion: Conversion
    created: bool


def admin_event_id(conversation: Conversation, event_name: str, order_id: str | None) -> str:
    """The same conversation, event and order always give the same id.

    The conversation's row id, not the wa_id, names the user: it stays the same when the user
    changes number or the business-scoped user id is learnt later.
    """
    return EVENT_ID_PREFIX + event_id_for(
        "admin",
        conversation.waba_id,
        conversation.phone_number_id,
        str(conversation.id),
        event_name,
        order_id or "",
    )


def _marked_before(session: Session, request: MarkRequest) -> Conversion | None:
    """The conversion an earlier request for this user, event and order recorded, on any of
    the user's conversations. Without a phone number the request means the user's most
    recently active conversation, which changes when the user writes to another of the
    business's numbers: the same request again must still find what it recorded (the
    contract: same wa_id, event_name and order_id, same record)."""
    order = (
        Conversion.order_id.is_(None)
        if request.order_id is None
        else Conversion.order_id == request.order_id
    )
    return session.scalar(
        select(Conversion)
        .join(Conversation, Conversion.conversation_id == Conversation.id)
        .where(
            store.is_user(request.user, request.user_field),
            Conversion.source.in_(MARKED_SOURCES),
            Conversion.event_name == request.event_name,
            order,
        )
        .order_by(Conversion.id)
        .limit(1)
    )


def mark_conversion(
    session: Session,
    request: MarkRequest,
    *,
    source: str = "admin",
    conversation: Conversation | None = None,
) -> Marked:
    """Enqueue the conversion, or return the one already recorded for it (``created=False``).

    ``source`` says who marked it (one of MARKED_SOURCES); it is not part of the event id, so
    the same order marked by an operator and by a connector is one conversion. A connector
    that found the request's conversation already passes it as ``conversation``."""
    if conversation is None:
        conversation = store.find_conversation(
            session, request.user, request.phone_number_id, field=request.user_field
        )
    if conversation is None:
        where = f" on phone number {request.phone_number_id}" if request.phone_number_id else ""
        raise APIError(
            404,
            "conversation_not_found",
            f"no conversation with {request.user_field} {request.user!r}{where}",
        )
    if request.phone_number_id is None:
        earlier = _marked_before(session, request)
        if earlier is not None:
            return Marked(earlier, created=False)
    if conversation.ctwa_clid is None:
        raise APIError(
            422,
            "no_click",
            f"the conversation with {request.user_field} {request.user!r} did not start from a "
            "click-to-WhatsApp ad (it has no ctwa_clid); Meta cannot attribute its conversions",
        )
    try:
        enqueued = enqueue(
            session,
            event_id=admin_event_id(conversation, request.event_name, request.order_id),
            waba_id=conversation.waba_id,
            ctwa_clid=conversation.ctwa_clid,
            event_name=request.event_name,
            event_time=request.event_time or utcnow(),
            source=source,
            custom_data=request.custom_data,
            conversation_id=conversation.id,
            order_id=request.order_id,
        )
    except InvalidConversion as exc:
        raise _invalid_conversion(exc) from None
    return Marked(enqueued.conversion, enqueued.created)


# --- list and read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """A checked ``GET /admin/conversions`` query (or ``waconv conversions list``)."""

    status: str | None = None
    limit: int = DEFAULT_LIMIT
    after_id: int | None = None  # from the cursor: rows with a smaller id come next
    event_name: str | None = None
    wa_id: str | None = None
    user_id: str | None = None
    source: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str | None]) -> ListQuery:
        """Check query-string values (absent or None: no filter; empty: refused)."""
        status = args.get("status")
        if status is not None and status not in Conversion.STATUSES:
            raise bad_request(
                "invalid_status",
                "status",
                f"status {status!r} is not one of: {', '.join(Conversion.STATUSES)}",
            )
        event_name = args.get("event_name")
        if event_name is not None:
            try:
                validate_event_name(event_name)
            except InvalidConversion as exc:
                raise _invalid_conversion(exc) from None
        source = args.get("source")
        if source is not None and source not in SOURCES:
            raise bad_request(
                "invalid_field",
                "source",
                f"source {source!r} is not one of: {', '.join(sorted(SOURCES))}",
            )
        wa_id, user_id, cursor = args.get("wa_id"), args.get("user_id"), args.get("cursor")
        return cls(
            status=status,
            limit=_limit(args.get("limit")),
            after_id=decode_cursor(cursor) if cursor is not None else None,
            event_name=event_name,
            wa_id=clean_text("wa_id", wa_id) if wa_id is not None else None,
            user_id=clean_text("user_id", user_id) if user_id is not None else None,
            source=source,
        )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise bad_request(
            "invalid_limit", "limit", f"limit must be an integer from 1 to {MAX_LIMIT}"
        )
    limit = int(text)
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(
            "invalid_limit",
            "limit",
            f"limit must be from 1 to {MAX_LIMIT} (got {limit}); page with next_cursor",
        )
    return limit


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    invalid = bad_request(
        "invalid_cursor", "cursor", "cursor is not one this API gave out; use next_cursor as is"
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (UnicodeError, ValueError, binascii.Error):
        raise invalid from None
    digits = text.removeprefix(CURSOR_PREFIX)
    if digits == text or not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise invalid
    last_id = int(digits)
    if not 1 <= last_id <= MAX_ID:
        raise invalid
    return last_id


@dataclass(frozen=True)
class Page:
    items: list[Conversion]
    next_cursor: str | None


def list_conversions(session: Session, query: ListQuery) -> Page:
    """Newest first; keyset pagination on the id, so a walk sees every row once."""
    stmt = select(Conversion)
    if query.status is not None:
        stmt = stmt.where(Conversion.status == query.status)
    if query.event_name is not None:
        stmt = stmt.where(Conversion.event_name == query.event_name)
    if query.source is not None:
        stmt = stmt.where(Conversion.source == query.source)
    if query.wa_id is not None or query.user_id is not None:
        conversations = select(Conversation.id)
        if query.wa_id is not None:
            conversations = conversations.where(Conversation.wa_id == query.wa_id)
        if query.user_id is not None:
            conversations = conversations.where(Conversation.user_id == query.user_id)
        stmt = stmt.where(Conversion.conversation_id.in_(conversations))
    if query.after_id is not None:
        stmt = stmt.where(Conversion.id < query.after_id)
    # One row more than asked tells whether another page follows.
    rows = list(session.scalars(stmt.order_by(Conversion.id.desc()).limit(query.limit + 1)))
    items = rows[: query.limit]
    more = len(rows) > query.limit
    return Page(items, encode_cursor(items[-1].id) if more else None)


def get_conversion(session: Session, conversion_id: int, *, for_update: bool = False) -> Conversion:
    found = (
        session.get(Conversion, conversion_id, with_for_update=for_update)
        if 1 <= conversion_id <= MAX_ID
        else None
    )
    if found is None:
        raise APIError(404, "conversion_not_found", f"no conversion with id {conversion_id}")
    return found


# --- retry ------------------------------------------------------------------------------------


def retry_conversion(session: Session, conversion_id: int) -> Conversion:
    """Queue a failed conversion again: due now, attempts and last_error kept for the record."""
    conversion = get_conversion(session, conversion_id, for_update=True)
    if conversion.status == Conversion.EXPIRED:
        raise APIError(
            409,
            "expired",
            f"conversion {conversion_id} expired: Meta refuses events whose event_time is more "
            "than 7 days old, so it cannot be sent again",
        )
    if conversion.status == Conversion.CANCELED:
        raise APIError(
            409,
            "canceled",
            f"conversion {conversion_id} was canceled by an operator; a canceled conversion is "
            "never sent (mark it again under another order_id if it must be)",
        )
    if conversion.status != Conversion.FAILED:
        raise APIError(
            409,
            "not_failed",
            f"conversion {conversion_id} is {conversion.status}; only failed conversions can "
            "be retried",
        )
    now = utcnow()
    if conversion.event_time < now - MAX_EVENT_AGE + SEND_MARGIN:
        raise APIError(
            409,
            "too_old",
            f"conversion {conversion_id} has event_time {isoformat(conversion.event_time)}, "
            "too close to or past 7 days ago: Meta refuses events older than 7 days",
        )
    conversion.status = Conversion.PENDING
    conversion.next_attempt_at = now
    session.flush()
    return conversion


# --- cancel -----------------------------------------------------------------------------------


def cancel_conversion(session: Session, conversion_id: int) -> Conversion:
    """A pending or failed conversion becomes canceled: no dispatcher claims it again (they
    claim pending ones only), and no retry, sweep or second mark makes it pending."""
    conversion = get_conversion(session, conversion_id, for_update=True)
    if conversion.status not in (Conversion.PENDING, Conversion.FAILED):
        raise APIError(
            409,
            "not_cancelable",
            f"conversion {conversion_id} is {conversion.status}; only pending or failed "
            "conversions can be canceled",
        )
    if conversion.status == Conversion.PENDING and _maybe_in_flight(session, conversion):
        raise APIError(
            409,
            "in_flight",
            f"conversion {conversion_id} may be in a request to Meta right now; try again in a "
            "few seconds",
        )
    conversion.status = Conversion.CANCELED
    session.flush()
    return conversion


def _maybe_in_flight(session: Session, conversion: Conversion) -> bool:
    """Whether a dispatcher may have claimed the conversion for the request it is sending.

    A dispatcher claims only due events of an account it holds the lease of, so an event not
    yet due, or of an account nobody holds, is not in flight. The account row is locked until
    this transaction ends (on SQLite the write lock already is), so no dispatcher takes the
    account between this look and the cancel.
    """
    now = utcnow()
    if conversion.next_attempt_at > now:
        return False
    account = session.scalar(
        select(Account).where(Account.waba_id == conversion.waba_id).with_for_update()
    )
    return (
        account is not None
        and account.dispatch_token is not None
        and account.dispatch_leased_until is not None
        and account.dispatch_leased_until > now
    )


# --- the request log --------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestsQuery:
    """A checked ``GET /admin/requests`` query."""

    limit: int = DEFAULT_LIMIT
    after_id: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str | None]) -> RequestsQuery:
        cursor = args.get("cursor")
        return cls(
            limit=_limit(args.get("limit")),
            after_id=decode_cursor(cursor) if cursor is not None else None,
        )


def list_requests(
    session: Session, query: RequestsQuery
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paged like the conversions."""
    rows, more = requestlog.list_requests(session, limit=query.limit, before_id=query.after_id)
    items = [requestlog.request_to_dict(r) for r in rows]
    return items, encode_cursor(rows[-1].id) if more else None


def conversion_detail(session: Session, conversion_id: int, settings: Settings) -> dict[str, Any]:
    """One conversion with the event it went out as and the requests that carried it."""
    conversion = get_conversion(session, conversion_id)
    requests = requestlog.requests_of(session, conversion.id)
    body = conversion_to_dict(conversion, settings)
    body["sent_event"] = requestlog.sent_event(
        session, conversion, settings, carried=bool(requests)
    )
    body["requests"] = [requestlog.request_to_dict(r) for r in requests]
    return body


# --- answers ----------------------------------------------------------------------------------


_ROUTINGS = "waconv.admin.routings"  # Session.info key: each account's routing, read once


def _routing(conversion: Conversion, settings: Settings) -> Routing:
    """Where the conversion's account sends (its own setting, else the WACONV_* defaults)."""
    session = object_session(conversion)
    cache: dict[str, Routing] = session.info.setdefault(_ROUTINGS, {}) if session else {}
    waba_id = conversion.waba_id
    if waba_id not in cache:
        account = registry.get_account(session, waba_id) if session else None
        try:
            cache[waba_id] = registry.routing_for(account or Account(waba_id=waba_id), settings)
        except ConfigError:  # unreadable stored events: the dispatcher holds them, saying so
            cache[waba_id] = Routing()
    return cache[waba_id]


def destinations_of(
    conversion: Conversion, settings: Settings | None = None
) -> tuple[str, dict[str, Any]]:
    """The conversion's overall status and its state at each destination: ``sent`` only when
    every destination has it, ``failed`` when one failed for good, else its own status. One
    not dispatched yet shows each destination its account will send it to (with
    ``settings``; without, Graph's)."""
    if not conversion.deliveries:
        state = {
            "status": conversion.status,
            "attempts": conversion.attempts,
            "last_error": conversion.last_error,
        }
        targets: tuple[str, ...] = (GRAPH,)
        if settings is not None and conversion.status == Conversion.PENDING:
            targets = _routing(conversion, settings).targets(conversion.event_name)
        return conversion.status, {name: dict(state) for name in targets}
    destinations = {
        d.destination: {"status": d.status, "attempts": d.attempts, "last_error": d.last_error}
        for d in conversion.deliveries
    }
    status = conversion.status
    if status == Conversion.PENDING and any(
        d.status == Conversion.FAILED for d in conversion.deliveries
    ):
        status = Conversion.FAILED
    return status, destinations


def conversion_to_dict(conversion: Conversion, settings: Settings | None = None) -> dict[str, Any]:
    """One conversion as the admin API and ``waconv conversions list --json`` show it (with
    ``settings``, a pending one shows every destination it will go to)."""
    status, destinations = destinations_of(conversion, settings)
    return {
        "id": conversion.id,
        "event_id": conversion.event_id,
        "event_name": conversion.event_name,
        "status": status,
        "destinations": destinations,
        "attempts": conversion.attempts,
        "last_error": conversion.last_error,
        "last_error_code": conversion.last_error_code,
        "last_error_subcode": conversion.last_error_subcode,
        "event_time": isoformat(conversion.event_time),
        "created_at": isoformat(conversion.created_at),
        "sent_at": isoformat(conversion.sent_at),
        "next_attempt_at": isoformat(conversion.next_attempt_at),
        "waba_id": conversion.waba_id,
        "dataset_id": conversion.dataset_id,
        "conversation_id": conversion.conversation_id,
        "ctwa_clid": conversion.ctwa_clid,
        "source": conversion.source,
        "rule_name": conversion.rule_name,
        "order_id": conversion.order_id,
        "custom_data": conversion.custom_data,
    }
