"""Walk a delivery: every entry, every change, every item.

Meta batches up to 1,000 updates in one POST. Nothing here trusts the shape of the payload: a
missing or mistyped field becomes a ``WebhookNotice`` (kept, visible, acknowledged), never an
exception, so one odd item cannot hold back the others or turn into a 5xx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from waconv.clock import from_unix, utcnow
from waconv.conversations import store
from waconv.db import insert_or_ignore
from waconv.models import AutomaticEvent, Message, MessageStatus, WebhookNotice
from waconv.rules.firing import fire_automatic_event, fire_message_rules
from waconv.services import Services

log = logging.getLogger(__name__)

# Message types whose text rules with `on = "message"` look at.
MESSAGE_TRIGGER_TYPES = frozenset({"text", "button", "interactive"})
MEDIA_TYPES = frozenset({"image", "video", "document", "sticker", "audio"})


def _str(value: Any) -> str | None:
    """A non-empty string, or None; numbers Meta sends as strings elsewhere are accepted."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_timestamp(value: Any) -> datetime | None:
    """Unix seconds, a string in messages and statuses, an integer in automatic_events."""
    if isinstance(value, bool):
        return None
    try:
        seconds = int(value) if isinstance(value, int) else int(str(value).strip())
        return from_unix(seconds)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def message_text(msg: dict[str, Any]) -> str | None:
    """What rules match: the text, the button label, the reply title, the order note, a caption."""
    kind = msg.get("type")
    if kind == "text":
        return _str(_dict(msg.get("text")).get("body"))
    if kind == "button":
        button = _dict(msg.get("button"))
        return _str(button.get("text")) or _str(button.get("payload"))
    if kind == "interactive":
        interactive = _dict(msg.get("interactive"))
        for key in ("button_reply", "list_reply"):
            title = _str(_dict(interactive.get(key)).get("title"))
            if title:
                return title
        return None
    if kind == "order":
        return _str(_dict(msg.get("order")).get("text"))
    if kind in MEDIA_TYPES:
        return _str(_dict(msg.get(kind)).get("caption"))
    return None


@dataclass
class ChangeContext:
    session: Session
    services: Services
    delivery_id: int
    waba_id: str
    field: str
    value: dict[str, Any]
    phone_number_id: str | None
    display_phone_number: str | None

    def notice(
        self,
        kind: str,
        payload: Any,
        *,
        code: int | None = None,
        title: str | None = None,
        message: str | None = None,
    ) -> None:
        self.session.execute(
            insert(WebhookNotice).values(
                delivery_id=self.delivery_id,
                waba_id=self.waba_id,
                field=self.field,
                kind=kind,
                code=code,
                title=title,
                message=message,
                payload=payload,
            )
        )


def process_payload(
    session: Session, services: Services, delivery_id: int, payload: dict[str, Any]
) -> int:
    """Apply every item of a delivery. Returns how many items were looked at."""
    items = 0
    for entry in _list(payload.get("entry")):
        entry = _dict(entry)
        waba_id = _str(entry.get("id"))
        if waba_id is None or not waba_id.isdigit():
            _orphan_notice(session, delivery_id, "entry without a WhatsApp Business Account id", entry)
            continue
        store.ensure_account(session, waba_id)
        for change in _list(entry.get("changes")):
            change = _dict(change)
            value = _dict(change.get("value"))
            metadata = _dict(value.get("metadata"))
            ctx = ChangeContext(
                session=session,
                services=services,
                delivery_id=delivery_id,
                waba_id=waba_id,
                field=_str(change.get("field")) or "",
                value=value,
                phone_number_id=_str(metadata.get("phone_number_id")),
                display_phone_number=_str(metadata.get("display_phone_number")),
            )
            items += _process_change(ctx)
    return items


def _orphan_notice(session: Session, delivery_id: int, message: str, payload: Any) -> None:
    session.execute(
        insert(WebhookNotice).values(
            delivery_id=delivery_id, kind="malformed", message=message, payload=payload
        )
    )


def _process_change(ctx: ChangeContext) -> int:
    if ctx.field == "messages":
        contacts = [_dict(c) for c in _list(ctx.value.get("contacts"))]
        items = 0
        for msg in _list(ctx.value.get("messages")):
            _process_message(ctx, _dict(msg), contacts)
            items += 1
        for status in _list(ctx.value.get("statuses")):
            _process_status(ctx, _dict(status))
            items += 1
        for error in _list(ctx.value.get("errors")):
            error = _dict(error)
            code = error.get("code")
            ctx.notice(
                "error",
                error,
                code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                title=_str(error.get("title")),
                message=_str(error.get("message")),
            )
            log.warning(
                "webhook.error waba_id=%s code=%s title=%s",
                ctx.waba_id,
                error.get("code"),
                error.get("title"),
            )
            items += 1
        return items
    if ctx.field == "automatic_events":
        items = 0
        for event in _list(ctx.value.get("automatic_events")):
            _process_automatic_event(ctx, _dict(event))
            items += 1
        return items
    # account_update, template status, … : kept for the record, nothing to act on.
    ctx.notice("unknown_field", ctx.value, message=f"field {ctx.field!r} is not acted on")
    return 1


def _contact_for(msg: dict[str, Any], contacts: list[dict[str, Any]]) -> dict[str, Any]:
    sender = _str(msg.get("from"))
    for contact in contacts:
        if sender and _str(contact.get("wa_id")) == sender:
            return contact
    sender_user = _str(msg.get("from_user_id"))
    for contact in contacts:
        if sender_user and _str(contact.get("user_id")) == sender_user:
            return contact
    return contacts[0] if len(contacts) == 1 else {}


def _process_message(
    ctx: ChangeContext, msg: dict[str, Any], contacts: list[dict[str, Any]]
) -> None:
    wamid = _str(msg.get("id"))
    if wamid is None:
        ctx.notice("malformed", msg, message="message without an id")
        return
    if ctx.phone_number_id is None:
        ctx.notice("malformed", msg, message="message without metadata.phone_number_id")
        return
    contact = _contact_for(msg, contacts)
    wa_id = _str(msg.get("from")) or _str(contact.get("wa_id"))
    user_id = _str(msg.get("from_user_id")) or _str(contact.get("user_id"))
    if wa_id is None and user_id is None:
        ctx.notice("malformed", msg, message="message with neither a wa_id nor a user_id")
        return
    timestamp = parse_timestamp(msg.get("timestamp"))
    if timestamp is None:
        ctx.notice("malformed", msg, message="message timestamp missing; time of receipt used")
        timestamp = utcnow()
    kind = _str(msg.get("type")) or "unknown"
    profile = _dict(contact.get("profile"))

    conversation = store.resolve_conversation(
        ctx.session,
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        display_phone_number=ctx.display_phone_number,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=_str(profile.get("name")),
        username=_str(profile.get("username")) or _str(contact.get("username")),
    )
    text = message_text(msg)
    message_id = insert_or_ignore(
        ctx.session,
        Message,
        {
            "wamid": wamid,
            "conversation_id": conversation.id,
            "delivery_id": ctx.delivery_id,
            "type": kind,
            "timestamp": timestamp,
            "text": text,
            "payload": msg,
        },
    )
    if message_id is None:
        return  # seen before: a redelivery takes no second effect

    store.record_activity(conversation, timestamp)
    referral = msg.get("referral")
    if isinstance(referral, dict):
        store.record_click(ctx.session, conversation, wamid, referral, timestamp)
    if kind == "system":
        _process_system(ctx, conversation, msg)
    elif kind == "unsupported" or kind not in KNOWN_MESSAGE_TYPES:
        errors = _list(msg.get("errors"))
        first = _dict(errors[0]) if errors else {}
        ctx.notice(
            "unsupported_message",
            msg,
            code=first.get("code") if isinstance(first.get("code"), int) else None,
            title=_str(first.get("title")),
            message=f"message type {kind!r} kept without action",
        )
    ctx.session.flush()

    trigger = "order" if kind == "order" else "message" if kind in MESSAGE_TRIGGER_TYPES else None
    if trigger is not None:
        refusals = fire_message_rules(
            ctx.session,
            ctx.services.rules,
            conversation,
            trigger,
            wamid,
            kind,
            text,
            timestamp,
            msg,
        )
        for refusal in refusals:
            ctx.notice("rule_refused", msg, message=refusal)


KNOWN_MESSAGE_TYPES = frozenset(
    {
        "text",
        "button",
        "interactive",
        "order",
        "image",
        "video",
        "document",
        "sticker",
        "audio",
        "location",
        "contacts",
        "reaction",
        "system",
        "request_welcome",
    }
)


def _process_system(ctx: ChangeContext, conversation: Any, msg: dict[str, Any]) -> None:
    system = _dict(msg.get("system"))
    if _str(system.get("type")) == "user_changed_number":
        new_wa_id = _str(system.get("new_wa_id")) or _str(system.get("wa_id"))
        if new_wa_id and not store.change_number(ctx.session, conversation, new_wa_id):
            ctx.notice(
                "identity_conflict",
                msg,
                message=f"user changed number to {new_wa_id}, which already has a conversation",
            )


def _process_status(ctx: ChangeContext, status: dict[str, Any]) -> None:
    wamid = _str(status.get("id"))
    state = _str(status.get("status"))
    if wamid is None or state is None:
        ctx.notice("malformed", status, message="status without id or status")
        return
    errors = status.get("errors")
    insert_or_ignore(
        ctx.session,
        MessageStatus,
        {
            "wamid": wamid,
            "status": state,
            "timestamp": parse_timestamp(status.get("timestamp")),
            "waba_id": ctx.waba_id,
            "phone_number_id": ctx.phone_number_id,
            "recipient_id": _str(status.get("recipient_id")) or _str(status.get("recipient_user_id")),
            "errors": errors if isinstance(errors, list) else None,
            "payload": status,
            "delivery_id": ctx.delivery_id,
        },
    )


def _process_automatic_event(ctx: ChangeContext, event: dict[str, Any]) -> None:
    wamid = _str(event.get("id"))
    name = _str(event.get("event_name"))
    timestamp = parse_timestamp(event.get("timestamp"))
    if wamid is None or name is None or timestamp is None:
        ctx.notice("malformed", event, message="automatic event without id, event_name or timestamp")
        return
    clid = _str(event.get("ctwa_clid"))
    conversation = store.conversation_for_click(ctx.session, clid, wamid)
    row_id = insert_or_ignore(
        ctx.session,
        AutomaticEvent,
        {
            "wamid": wamid,
            "event_name": name,
            "timestamp": timestamp,
            "waba_id": ctx.waba_id,
            "phone_number_id": ctx.phone_number_id,
            "ctwa_clid": clid,
            "conversation_id": conversation.id if conversation else None,
            "payload": event,
            "delivery_id": ctx.delivery_id,
        },
    )
    if row_id is None:
        return
    refusals = fire_automatic_event(
        ctx.session,
        ctx.services.rules,
        ctx.waba_id,
        conversation,
        wamid,
        name,
        clid,
        timestamp,
        event,
    )
    for refusal in refusals:
        ctx.notice("rule_refused", event, message=refusal)
