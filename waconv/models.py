"""Every table of waconv, in one place so the schema reads as a whole.

Times are aware UTC (``UTCDateTime``); defaults are callables, never values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from waconv.clock import utcnow
from waconv.db import Base, BigId, JsonDoc, UTCDateTime

# Meta ids are numeric strings; wamids and click ids are longer opaque strings.
META_ID = 32
WAMID = 255
CLICK_ID = 512
USER_ID = 160  # a BSUID is "<ISO2>.<up to 128 alphanumerics>"; parent ids are longer


class Account(Base):
    """A WhatsApp Business Account: where its conversions go, with which token."""

    __tablename__ = "accounts"

    ACTIVE = "active"
    PAUSED = "paused"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str] = mapped_column(String(META_ID), unique=True)
    dataset_id: Mapped[str | None] = mapped_column(String(META_ID))
    # Fernet token (see waconv.accounts.crypto); never the raw value.
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    partner_agent: Mapped[str | None] = mapped_column(String(255))
    # Limited Data Use; None means "the WACONV_LDU default".
    ldu: Mapped[bool | None] = mapped_column(Boolean)
    ldu_country: Mapped[int | None] = mapped_column(Integer)
    ldu_state: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Meta's code behind a pause (``100/33``, ``190``): what tells a dataset problem from a token
    # problem, without reading the operator's sentence.
    pause_code: Mapped[str | None] = mapped_column(String(32))
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A paused account is probed again from this time on (a fixed env token resumes it).
    probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dataset_provision_tried_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The dispatcher sending this account's events holds this lease (one dispatcher per account
    # at a time: its events need no lease of their own, see waconv.conversions.dispatcher).
    dispatch_token: Mapped[str | None] = mapped_column(String(64))
    dispatch_leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # graph | gateway | both; None means "the WACONV_DESTINATION default".
    destination: Mapped[str | None] = mapped_column(String(16))
    gateway_url: Mapped[str | None] = mapped_column(Text)
    # Fernet, like the access token; never the raw key.
    gateway_key_encrypted: Mapped[str | None] = mapped_column(Text)
    # Comma-separated event names that go to the Gateway; None: WACONV_GATEWAY_EVENTS.
    gateway_events: Mapped[str | None] = mapped_column(Text)
    # Meta's rate limit (the account's, or the app's) holds its sending until then; why.
    throttled_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    throttle_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One signed POST from Meta, stored before the 200."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_id", "status", "id"),)

    RECEIVED = "received"  # stored, waiting for the background processor
    PROCESSED = "processed"
    FAILED = "failed"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Meta redelivers the same bytes; the hash makes a redelivery a no-op.
    body_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once pruned
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16), default=PROCESSED)
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    items: Mapped[int] = mapped_column(Integer, default=0)
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Conversation(Base):
    """One user talking to one business phone number, and the ad click that brought them."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("phone_number_id", "wa_id"),
        UniqueConstraint("phone_number_id", "user_id"),
        Index("ix_conversations_wa_id_last", "wa_id", "last_message_at"),
        Index("ix_conversations_user_id_last", "user_id", "last_message_at"),
        # The console's search by any id of the user.
        Index("ix_conversations_parent_user_id", "parent_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str] = mapped_column(ForeignKey("accounts.waba_id"), index=True)
    phone_number_id: Mapped[str] = mapped_column(String(META_ID))
    display_phone_number: Mapped[str | None] = mapped_column(String(32))
    wa_id: Mapped[str | None] = mapped_column(String(64))
    # Business-scoped user id (2026): the only identity of users whose number is withheld.
    user_id: Mapped[str | None] = mapped_column(String(USER_ID))
    # The BSUID shared by a group of linked business portfolios (``US.ENT.…``), when Meta sends one.
    parent_user_id: Mapped[str | None] = mapped_column(String(USER_ID))
    username: Mapped[str | None] = mapped_column(String(255))
    profile_name: Mapped[str | None] = mapped_column(String(255))
    ctwa_clid: Mapped[str | None] = mapped_column(String(CLICK_ID))
    # The ad of the latest click (source_id, source_type, source_url, headline, body, media_type…).
    referral: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Click(Base):
    """Every referral seen, the history behind ``Conversation.ctwa_clid``."""

    __tablename__ = "clicks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    message_wamid: Mapped[str] = mapped_column(String(WAMID), unique=True)
    ctwa_clid: Mapped[str | None] = mapped_column(String(CLICK_ID), index=True)
    source_id: Mapped[str | None] = mapped_column(String(64))
    source_type: Mapped[str | None] = mapped_column(String(32))
    source_url: Mapped[str | None] = mapped_column(Text)
    headline: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    media_type: Mapped[str | None] = mapped_column(String(32))
    image_url: Mapped[str | None] = mapped_column(Text)
    video_url: Mapped[str | None] = mapped_column(Text)
    thumbnail_url: Mapped[str | None] = mapped_column(Text)
    welcome_message: Mapped[str | None] = mapped_column(Text)
    referral: Mapped[dict[str, Any]] = mapped_column(JsonDoc)  # as Meta sent it
    # Indexed for the ads report, which selects clicks by date.
    clicked_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # The ads report's first and last click of an ad in a range: one index probe each.
    __table_args__ = (Index("ix_clicks_source_id_clicked_at", "source_id", "clicked_at"),)


class Message(Base):
    """A message of a conversation; the unique wamid makes every redelivery harmless."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_ts", "conversation_id", "timestamp"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wamid: Mapped[str] = mapped_column(String(WAMID), unique=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    type: Mapped[str] = mapped_column(String(32))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    # What rules match on: text body, button text, reply title, order note. Pruned with age.
    text: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # None: the user wrote to the business, one to one (the only messages rules look at).
    origin: Mapped[str | None] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(USER_ID))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    GROUP = "group"  # written in a group the user belongs to
    ECHO = "echo"  # sent by the business (message_echoes, smb_message_echoes)
    USER_ACTION = "user_action"  # a link click on a marketing message (user_actions)


class UserAlias(Base):
    """An id a user had before Meta changed it: ``previous`` now means ``current``.

    Written by the three identity signals (see waconv.conversations.identity), also for ids no
    conversation holds yet: a message from either id later finds the user's conversation.
    ``waconv prune`` keeps these links (no text of the user is in them).
    """

    __tablename__ = "user_aliases"
    __table_args__ = (
        # previous first: conversation lookups ask by id, not by account.
        UniqueConstraint("previous", "waba_id"),
        Index("ix_user_aliases_current", "current"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    kind: Mapped[str] = mapped_column(String(16))  # wa_id | user_id
    previous: Mapped[str] = mapped_column(String(USER_ID))
    current: Mapped[str] = mapped_column(String(USER_ID))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MessageStatus(Base):
    """sent / delivered / read / failed / played of a message the business sent."""

    __tablename__ = "message_statuses"
    __table_args__ = (UniqueConstraint("wamid", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wamid: Mapped[str] = mapped_column(String(WAMID))
    status: Mapped[str] = mapped_column(String(32))
    timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    phone_number_id: Mapped[str | None] = mapped_column(String(META_ID))
    recipient_id: Mapped[str | None] = mapped_column(String(160))
    errors: Mapped[list[Any] | None] = mapped_column(JsonDoc)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AutomaticEvent(Base):
    """A purchase or lead Meta detected in a CTWA thread (``automatic_events`` field)."""

    __tablename__ = "automatic_events"
    __table_args__ = (UniqueConstraint("wamid", "event_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wamid: Mapped[str] = mapped_column(String(WAMID))
    event_name: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    phone_number_id: Mapped[str | None] = mapped_column(String(META_ID))
    ctwa_clid: Mapped[str | None] = mapped_column(String(CLICK_ID))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookNotice(Base):
    """What a delivery said that is not a message: errors, unknown fields, unknown items."""

    __tablename__ = "webhook_notices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_deliveries.id"))
    waba_id: Mapped[str | None] = mapped_column(String(META_ID))
    field: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # error | unknown_field | unknown_item
    code: Mapped[int | None] = mapped_column(Integer)
    title: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[Any] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Conversion(Base):
    """The outbox: one conversion event, its schedule and its fate."""

    __tablename__ = "conversions"
    # The due-event index holds only events still to send (partial, on both databases):
    # marking a batch sent only takes its rows out of it (measured on SQLite: 8.5 -> 4.5 ms
    # per 1,000). Queries must test ``status = 'pending'`` (not an IN list), or SQLite's
    # planner does not see that the index applies. Every query on pending events names the
    # account or reads them all: one such index (migration 0013 dropped a second).
    __table_args__ = (
        Index(
            "ix_conversions_account_due",
            "waba_id",
            "next_attempt_at",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    PENDING = "pending"  # to send; also while its request is in flight
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"  # by an operator; never sent, never pending again
    STATUSES = (PENDING, SENT, FAILED, EXPIRED, CANCELED)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Deterministic: the same conversion always yields the same id, so a double enqueue
    # collides here and Meta never sees one conversion under two ids.
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    waba_id: Mapped[str] = mapped_column(ForeignKey("accounts.waba_id"))
    dataset_id: Mapped[str | None] = mapped_column(String(META_ID))  # where it was sent
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    ctwa_clid: Mapped[str] = mapped_column(String(CLICK_ID))
    event_name: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    custom_data: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # Further event fields, e.g. messaging_outcome_data for automatic events.
    extra: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    source: Mapped[str] = mapped_column(String(32))  # rule | admin | automatic_event
    rule_name: Mapped[str | None] = mapped_column(String(128))
    order_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)  # one sentence for the operator
    last_error_code: Mapped[int | None] = mapped_column(Integer)
    last_error_subcode: Mapped[int | None] = mapped_column(Integer)
    last_error_title: Mapped[str | None] = mapped_column(Text)
    last_error_message: Mapped[str | None] = mapped_column(Text)
    last_error_fbtrace_id: Mapped[str | None] = mapped_column(String(128))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The request log's row of the Graph request that delivered it, written by the UPDATE
    # that marks it sent (requests refused or failed are linked by DispatchRequestConversion).
    # No foreign key: prune deletes old requests and leaves this id pointing at nothing.
    sent_request_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Per destination, for accounts that send to more than Graph (read-only: the dispatcher
    # writes them with Core).
    deliveries: Mapped[list[ConversionDelivery]] = relationship(
        lazy="selectin", viewonly=True, order_by="ConversionDelivery.destination"
    )


class ConversionDelivery(Base):
    """One conversion at one destination, for accounts that send to more than the Graph API
    (an account sending to Graph alone keeps this state on the conversion itself)."""

    __tablename__ = "conversion_deliveries"

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"

    conversion_id: Mapped[int] = mapped_column(
        ForeignKey("conversions.id", ondelete="CASCADE"), primary_key=True
    )
    destination: Mapped[str] = mapped_column(String(16), primary_key=True)  # graph | gateway
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AdConversionStat(Base):
    """Conversions per account, ad, click day, event, outcome and currency: the ads report's
    rollup. Kept by triggers on ``conversions`` (migration 0007), never written by the app."""

    __tablename__ = "ad_conversion_stats"
    __table_args__ = (
        UniqueConstraint(
            "waba_id",
            "source_id",
            "day",
            "event_name",
            "outcome",
            "currency",
            name="uq_ad_conversion_stats_waba_id",
        ),
    )

    CREDITED = "credited"  # pending or sent
    NOT_SENT = "not_sent"  # failed or expired

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    source_id: Mapped[str] = mapped_column(String(64))  # "" for a click without one
    day: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD of the click, UTC
    event_name: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(8))
    currency: Mapped[str] = mapped_column(String(8))  # Purchase's currency, else ""
    events: Mapped[int] = mapped_column(BigInteger)
    # Millionths of the currency: exact sums on SQLite too.
    revenue_micros: Mapped[int] = mapped_column(BigInteger)


class AdClickStat(Base):
    """Clicks per account, ad, day and the day of the previous click of the same chain (the
    clicks of one click id, or of one conversation): the ads report's exact distinct counts
    for any range. Kept by triggers on ``clicks`` (migration 0009), never written by the app."""

    __tablename__ = "ad_click_stats"
    __table_args__ = (
        UniqueConstraint(
            "waba_id", "source_id", "kind", "day", "prev_day", name="uq_ad_click_stats_waba_id"
        ),
    )

    CLICK = "click"  # chains of one ctwa_clid
    CONVERSATION = "conversation"  # chains of one conversation

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    source_id: Mapped[str] = mapped_column(String(64))  # "" for a click without one
    kind: Mapped[str] = mapped_column(String(16))
    day: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD of the click, UTC
    prev_day: Mapped[str] = mapped_column(String(10))  # of the chain's previous click, or ""
    count: Mapped[int] = mapped_column(BigInteger)


class ConsoleLoginFailure(Base):
    """A wrong admin token at the console's login, by client (a hash of its address): the
    login's rate limit, shared by every worker process."""

    __tablename__ = "console_login_failures"
    __table_args__ = (Index("ix_console_login_failures_client", "client", "failed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DispatchRequest(Base):
    """One HTTP request that carried events to a destination, and what came back."""

    __tablename__ = "dispatch_requests"

    GRAPH = "graph"
    GATEWAY = "gateway"
    DESTINATIONS = (GRAPH, GATEWAY)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # When the request was sent; pruned by it (waconv prune).
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    waba_id: Mapped[str] = mapped_column(String(META_ID))
    destination: Mapped[str] = mapped_column(String(16))
    events: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)  # None: no answer (network, timeout)
    duration_ms: Mapped[int] = mapped_column(Integer)
    events_received: Mapped[int | None] = mapped_column(Integer)
    fbtrace_id: Mapped[str | None] = mapped_column(String(128))
    messages: Mapped[list[Any] | None] = mapped_column(JsonDoc)
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_subcode: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)


class DispatchRequestConversion(Base):
    """Which conversions a request carried (up to 1,000 rows per request), for every request
    but a Graph request Meta accepted: that one is on its conversions (``sent_request_id``).

    No foreign keys: PostgreSQL checks them row by row, which tripled the cost of a request's
    links (bench/requestlog.py). Only record_request writes here, with the request it just
    inserted and the conversions it sent; conversions are never deleted, and prune deletes a
    request's links with it.
    """

    __tablename__ = "dispatch_request_conversions"

    request_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Read by conversion: a conversion's requests, newest first.
    conversion_id: Mapped[int] = mapped_column(BigId, primary_key=True, index=True)


class CustomerIdentifier(Base):
    """Customer information a connector gave for a conversation, only ever as SHA-256.

    What ``user_data`` carries with ``WACONV_SEND_CUSTOMER_INFO`` (``em``, ``fn``, ``ct``, ...),
    and how a later order finds the conversation by an email an earlier conversion named.
    """

    __tablename__ = "customer_identifiers"
    __table_args__ = (
        UniqueConstraint("conversation_id", "field", "value_sha256"),
        Index("ix_customer_identifiers_lookup", "field", "value_sha256"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    field: Mapped[str] = mapped_column(String(16))  # em, ph, fn, ln, ct, st, zp, country, ...
    value_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConnectorReceipt(Base):
    """One signed delivery of a connector (a Shopify order webhook): what became of it.

    The body holds the customer's name, address and email: it is kept only while the delivery
    waits for the background processor (``received``), encrypted under WACONV_SECRET_KEY, and
    dropped once applied. The webhook id makes a redelivery harmless, and the rest says what
    happened, for the unmatched list.
    """

    __tablename__ = "connector_receipts"
    __table_args__ = (
        UniqueConstraint("connector", "webhook_id"),
        Index("ix_connector_receipts_outcome_id", "outcome", "id"),
    )

    MATCHED = "matched"  # a conversion was recorded (or found recorded) for it
    UNMATCHED = "unmatched"  # no conversation with a click has its phone or email
    IGNORED = "ignored"  # a topic waconv does not map to an event
    REFUSED = "refused"  # no conversion: not one Meta would take, or a stored order not applied
    RECEIVED = "received"  # stored, waiting for the background processor to apply it
    OUTCOMES = (MATCHED, UNMATCHED, IGNORED, REFUSED, RECEIVED)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    connector: Mapped[str] = mapped_column(String(16))
    webhook_id: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(255))
    event_name: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    matched_by: Mapped[str | None] = mapped_column(String(16))  # phone | email
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    conversion_id: Mapped[int | None] = mapped_column(ForeignKey("conversions.id"))
    # The order's phone numbers and emails, hashed: enough to say later which customer it was.
    identifiers: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # While ``received``: the verified body (Fernet, see waconv.accounts.crypto) and the time
    # Shopify says it sent it (X-Shopify-Triggered-At). Both None once applied.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
