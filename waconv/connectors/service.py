"""What the connectors do: find the conversation an outside conversion belongs to, keep the
customer information it names (hashed), and mark the conversion through the admin API's path.

Functions here only ``flush()``; the views own the transaction. Nothing plain about a customer
is written, logged or returned: phone numbers and emails are matched through their digests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from waconv.admin import service as admin
from waconv.clock import isoformat, to_unix, utcnow
from waconv.connectors.shopify import TOPICS, ShopifyOrder, UnreadableOrder, read_order
from waconv.conversations import store
from waconv.conversions.events import MAX_EVENT_AGE
from waconv.customers import store as customers
from waconv.customers.normalize import hash_all, hashed, phone_digits, wa_id_candidates
from waconv.db import insert_or_ignore
from waconv.errors import APIError
from waconv.models import ConnectorReceipt, Conversation, UserAlias

log = logging.getLogger(__name__)

CONNECTOR_DELIVERIES = Counter(
    "waconv_connector_deliveries",
    "Signed connector deliveries by connector and outcome (matched, unmatched, ignored, "
    "refused, duplicate)",
    ["connector", "outcome"],
)

SHOPIFY = "shopify"
CONNECTOR = "connector"  # the generic /connectors/events
MAX_WEBHOOK_ID = 255  # ConnectorReceipt.webhook_id is VARCHAR(255)
# A conversion marked for an order must still be sendable: Meta refuses events older than
# 7 days, and one that close to the limit could not leave the outbox in time.
SEND_WINDOW = MAX_EVENT_AGE - timedelta(minutes=10)
EVENT_FIELDS = frozenset(
    {
        "event_name",
        "wa_id",
        "user_id",
        "phone",
        "email",
        "custom_data",
        "event_time",
        "order_id",
        "phone_number_id",
        "user_data",
    }
)
IDENTITY_FIELDS = ("wa_id", "user_id", "phone", "email")


# --- matching ---------------------------------------------------------------------------------


def has_number(digits: str) -> Any:
    """Conversations whose user's wa_id is this number, now or before a change of number
    (a shop or a CRM keeps the number the customer gave it)."""
    candidates = wa_id_candidates(digits)
    earlier = select(UserAlias.current).where(UserAlias.previous.in_(candidates))
    return Conversation.wa_id.in_(candidates) | Conversation.wa_id.in_(earlier)


def conversation_by_phone(session: Session, digits: str) -> Conversation | None:
    """The most recently active conversation with a click whose user has this number."""
    return session.scalar(
        select(Conversation)
        .where(has_number(digits), Conversation.ctwa_clid.is_not(None))
        .order_by(Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc())
        .limit(1)
    )


def conversation_by_email(session: Session, email_sha256: str) -> Conversation | None:
    found = customers.conversations_with(session, "em", email_sha256)
    return found[0] if found else None


@dataclass(frozen=True)
class Match:
    conversation: Conversation | None
    by: str | None  # phone | email
    phone_hashes: list[str]
    email_hashes: list[str]


def match_customer(
    session: Session, phones: list[str], emails: list[str], default_region: str
) -> Match:
    """By phone first (the order's, the customer's, shipping, billing), then by an email an
    earlier conversion named."""
    phone_hashes: list[str] = []
    email_hashes: list[str] = []
    found: tuple[Conversation, str] | None = None
    for raw in phones:
        digits = phone_digits(raw, default_region)
        if digits is None:
            continue
        phone_hashes.append(hashlib.sha256(digits.encode()).hexdigest())
        if found is None:
            conversation = conversation_by_phone(session, digits)
            if conversation is not None:
                found = (conversation, "phone")
    for raw in emails:
        digest = hashed("em", raw)
        if digest is None:
            continue
        email_hashes.append(digest)
        if found is None:
            conversation = conversation_by_email(session, digest)
            if conversation is not None:
                found = (conversation, "email")
    if found is None:
        return Match(None, None, phone_hashes, email_hashes)
    return Match(found[0], found[1], phone_hashes, email_hashes)


def _mark_for(
    session: Session, conversation: Conversation, mark: admin.MarkRequest, source: str
) -> admin.Marked:
    """Mark ``mark`` (checked by the admin API's rules) for a conversation found here.

    Its phone number stays the request's: without one, the same request again finds what it
    recorded on any of the user's conversations, as the admin API does."""
    if conversation.wa_id:
        user_field, user = "wa_id", conversation.wa_id
    else:
        user_field, user = "user_id", conversation.user_id or ""
    pinned = dataclasses.replace(mark, user_field=user_field, user=user)
    return admin.mark_conversion(session, pinned, source=source, conversation=conversation)


# --- Shopify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopifyDelivery:
    webhook_id: str
    topic: str
    order: object  # the parsed body
    triggered_at: datetime | None


@dataclass(frozen=True)
class Receipt:
    id: int | None
    outcome: str  # one of ConnectorReceipt.OUTCOMES, or "duplicate"
    conversion_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.outcome, "receipt_id": self.id, "conversion_id": self.conversion_id}


def receive_shopify(session: Session, delivery: ShopifyDelivery, default_region: str) -> Receipt:
    """Record the delivery once (by its webhook id) and mark the conversion it stands for.

    Whatever the order holds, Shopify gets its 200: an order that matches no conversation, or
    whose conversion Meta would refuse, is kept with the reason, for the unmatched list. The
    receipt is written last, in one statement; two copies racing both decide the same thing
    (the conversion is keyed by its event id), and only the first receipt is kept.
    """
    earlier = _earlier(session, SHOPIFY, delivery.webhook_id)
    if earlier is not None:
        return duplicate(SHOPIFY, earlier)
    values: dict[str, Any] = {
        "connector": SHOPIFY,
        "webhook_id": delivery.webhook_id,
        "topic": delivery.topic[:64],
        "received_at": utcnow(),
    }
    values.update(apply_shopify(session, delivery, default_region))
    receipt_id = insert_or_ignore(session, ConnectorReceipt, values)
    if receipt_id is None:
        raced = _earlier(session, SHOPIFY, delivery.webhook_id)
        assert raced is not None, "a receipt conflicted on its webhook id and is not there"
        return duplicate(SHOPIFY, raced)
    counted(SHOPIFY, receipt_id, values)
    return Receipt(receipt_id, values["outcome"], values.get("conversion_id"))


def duplicate(connector: str, earlier: Receipt) -> Receipt:
    """The receipt already kept for a delivery's webhook id, counted as a duplicate."""
    CONNECTOR_DELIVERIES.labels(connector=connector, outcome="duplicate").inc()
    return earlier


def counted(connector: str, receipt_id: int, values: dict[str, Any]) -> None:
    """What became of a delivery (a receipt's columns), in the metrics and the log: never a
    word of customer information."""
    CONNECTOR_DELIVERIES.labels(connector=connector, outcome=values["outcome"]).inc()
    log.info(
        "connector.%s receipt=%s topic=%s outcome=%s matched_by=%s conversion=%s",
        connector,
        receipt_id,
        values.get("topic"),
        values["outcome"],
        values.get("matched_by"),
        values.get("conversion_id"),
    )


def _earlier(session: Session, connector: str, webhook_id: str) -> Receipt | None:
    row = session.execute(
        select(ConnectorReceipt.id, ConnectorReceipt.conversion_id).where(
            ConnectorReceipt.connector == connector, ConnectorReceipt.webhook_id == webhook_id
        )
    ).first()
    return None if row is None else Receipt(row.id, "duplicate", row.conversion_id)


def apply_shopify(
    session: Session, delivery: ShopifyDelivery, default_region: str
) -> dict[str, Any]:
    """What became of the delivery: the receipt's columns (only ``flush()``es)."""
    if delivery.topic not in TOPICS:
        return {
            "outcome": ConnectorReceipt.IGNORED,
            "reason": f"topic {delivery.topic!r} is not converted; subscribe "
            f"{', '.join(sorted(TOPICS))}",
        }
    try:
        order = read_order(delivery.topic, delivery.order, triggered_at=delivery.triggered_at)
    except UnreadableOrder as exc:
        return {"outcome": ConnectorReceipt.REFUSED, "reason": f"{exc.field}: {exc.message}"}
    match = match_customer(session, order.phones, order.emails, default_region)
    values: dict[str, Any] = {
        "order_id": order.order_id[:255],
        "event_name": order.event_name,
        "identifiers": {"ph": match.phone_hashes, "em": match.email_hashes},
    }
    if match.conversation is None:
        values["outcome"] = ConnectorReceipt.UNMATCHED
        values["reason"] = (
            "no conversation with an ad click has the order's phone number or an email an "
            "earlier conversion named"
            if match.phone_hashes or match.email_hashes
            else "the order has no phone number or email to match"
        )
        return values
    values["conversation_id"] = match.conversation.id
    values["matched_by"] = match.by
    try:
        mark = admin.MarkRequest.from_json(_mark_body(order))
        _remember_order_customer(session, match, order, default_region)
        marked = _mark_for(session, match.conversation, mark, SHOPIFY)
    except APIError as exc:
        values["outcome"] = ConnectorReceipt.REFUSED
        values["reason"] = f"{exc.details.get('field', exc.code)}: {exc.message}"
        return values
    values["outcome"] = ConnectorReceipt.MATCHED
    values["conversion_id"] = marked.conversion.id
    return values


def _mark_body(order: ShopifyOrder) -> dict[str, Any]:
    now = utcnow()
    body: dict[str, Any] = {
        "wa_id": "-",  # replaced by the matched conversation's (see _mark_for)
        "event_name": order.event_name,
        "custom_data": order.custom_data,
        "order_id": order.order_id,
    }
    if order.event_time is not None:
        # Shopify's clock may run ahead of ours by a little: never "in the future".
        moment = min(order.event_time, now)
        if moment < now - SEND_WINDOW:
            raise APIError(
                400,
                "invalid_event_time",
                f"the order's time {isoformat(moment)} is too close to or past Meta's 7-day "
                "limit on event_time",
                field="event_time",
            )
        body["event_time"] = to_unix(moment)
    return body


def _remember_order_customer(
    session: Session, match: Match, order: ShopifyOrder, default_region: str
) -> None:
    assert match.conversation is not None
    digests = [
        *(("em", digest) for digest in match.email_hashes),
        *(("ph", digest) for digest in match.phone_hashes),
        *hash_all(order.customer, default_region=default_region).items(),
    ]
    customers.remember(session, match.conversation.id, digests)


# --- the generic connector --------------------------------------------------------------------


def receive_event(session: Session, body: object, default_region: str) -> admin.Marked:
    """``POST /connectors/events``: the admin API's mark, found by wa_id, user_id, phone or
    email, with optional ``user_data`` (plain customer information, kept hashed)."""
    if not isinstance(body, dict):
        raise admin.bad_request("invalid_body", "body", "the body must be a JSON object")
    unknown = sorted(str(key) for key in body if key not in EVENT_FIELDS)
    if unknown:
        raise admin.bad_request(
            "unknown_field",
            unknown[0],
            f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(EVENT_FIELDS))}",
        )
    given = [key for key in IDENTITY_FIELDS if body.get(key) is not None]
    if len(given) != 1:
        raise admin.bad_request(
            "missing_field" if not given else "invalid_field",
            given[1] if given else "wa_id",
            "give exactly one of wa_id, user_id, phone or email",
        )
    identity = given[0]
    user_data = body.get("user_data")
    if user_data is not None and not isinstance(user_data, dict):
        raise admin.bad_request("invalid_field", "user_data", "user_data must be a JSON object")
    # The admin API's checks, on everything but who the conversion is for.
    rest = {k: v for k, v in body.items() if k not in (*IDENTITY_FIELDS, "user_data")}
    mark = admin.MarkRequest.from_json({**rest, "wa_id": "-"})
    conversation, digests = _find_for_event(session, identity, body[identity], mark, default_region)
    extra = hash_all(user_data or {}, default_region=default_region)
    customers.remember(session, conversation.id, [*extra.items(), *digests.items()])
    return _mark_for(session, conversation, mark, CONNECTOR)


def _find_for_event(
    session: Session,
    identity: str,
    value: object,
    mark: admin.MarkRequest,
    default_region: str,
) -> tuple[Conversation, dict[str, str]]:
    """The conversation, and the digest of the phone or email that found it."""
    if not isinstance(value, str) or not value.strip():
        raise admin.bad_request("invalid_field", identity, f"{identity} must be a non-empty string")
    conversation: Conversation | None
    digests: dict[str, str] = {}
    if identity in ("wa_id", "user_id"):
        user = admin.clean_text(identity, value)
        conversation = _conversation_of(session, user, identity, mark.phone_number_id)
        where = f"{identity} {user!r}"
    elif identity == "phone":
        digits = phone_digits(value, default_region)
        if digits is None:
            raise admin.bad_request(
                "invalid_field", "phone", "phone is not a phone number (with its country code)"
            )
        digests["ph"] = hashlib.sha256(digits.encode()).hexdigest()
        conversation = _conversation_of_phone(session, digits, mark.phone_number_id)
        where = "that phone number"  # never echoed: it is customer information
    else:
        digest = hashed("em", value)
        if digest is None:
            raise admin.bad_request("invalid_field", "email", "email is not an email address")
        digests["em"] = digest
        conversation = conversation_by_email(session, digest)
        where = "that email (an email is known once an earlier conversion named it)"
    if conversation is None:
        raise APIError(404, "conversation_not_found", f"no conversation with {where}")
    if conversation.ctwa_clid is None:
        raise APIError(
            422,
            "no_click",
            f"the conversation with {where} did not start from a click-to-WhatsApp ad (it has "
            "no ctwa_clid); Meta cannot attribute its conversions",
        )
    return conversation, digests


def _conversation_of(
    session: Session, user: str, field: str, phone_number_id: str | None
) -> Conversation | None:
    return store.find_conversation(session, user, phone_number_id, field=field)


def _conversation_of_phone(
    session: Session, digits: str, phone_number_id: str | None
) -> Conversation | None:
    query = select(Conversation).where(has_number(digits))
    if phone_number_id:
        query = query.where(Conversation.phone_number_id == phone_number_id)
    return session.scalar(
        query.order_by(
            Conversation.ctwa_clid.is_(None),  # one with a click first
            Conversation.last_message_at.desc().nulls_last(),
            Conversation.id.desc(),
        ).limit(1)
    )


# --- the unmatched list -----------------------------------------------------------------------


def receipt_to_dict(receipt: ConnectorReceipt) -> dict[str, Any]:
    return {
        "id": receipt.id,
        "connector": receipt.connector,
        "webhook_id": receipt.webhook_id,
        "topic": receipt.topic,
        "order_id": receipt.order_id,
        "event_name": receipt.event_name,
        "outcome": receipt.outcome,
        "reason": receipt.reason,
        "received_at": isoformat(receipt.received_at),
    }


@dataclass(frozen=True)
class UnmatchedPage:
    items: list[ConnectorReceipt]
    next_cursor: str | None
    total: int


def list_unmatched(session: Session, limit: int, after_id: int | None) -> UnmatchedPage:
    """Orders kept without a conversion (unmatched or refused), newest first."""
    kept = ConnectorReceipt.outcome.in_((ConnectorReceipt.UNMATCHED, ConnectorReceipt.REFUSED))
    stmt = select(ConnectorReceipt).where(kept)
    if after_id is not None:
        stmt = stmt.where(ConnectorReceipt.id < after_id)
    rows = list(session.scalars(stmt.order_by(ConnectorReceipt.id.desc()).limit(limit + 1)))
    items = rows[:limit]
    total = session.scalar(select(func.count()).select_from(ConnectorReceipt).where(kept)) or 0
    more = len(rows) > limit
    return UnmatchedPage(items, admin.encode_cursor(items[-1].id) if more else None, total)
