"""Walk a delivery: every entry, every change, every item.

Meta batches up to 1,000 updates in one POST. Nothing here trusts the shape of the payload: a
missing or mistyped field becomes a ``WebhookNotice`` (kept, visible, acknowledged), never an
exception, so one odd item cannot hold back the others or turn into a 5xx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from waconv.clock import from_unix, utcnow
from waconv.conversations import identity, store
from waconv.db import insert_or_ignore
from waconv.models import (
    AutomaticEvent,
    Conversation,
    Message,
    MessageStatus,
    WebhookNotice,
)
from waconv.rules.firing import fire_automatic_event, fire_message_rules
from waconv.services import Services

log = logging.getLogger(__name__)

# Message types whose text rules with `on = "message"` look at.
MESSAGE_TRIGGER_TYPES = frozenset({"text", "button", "interactive"})
MEDIA_TYPES = frozenset({"image", "video", "document", "sticker", "audio"})


def _length(column: Any) -> int:
    return int(column.type.length)


# Column sizes: a longer value is not Meta's and PostgreSQL would refuse the whole delivery.
WAMID_MAX = _length(Message.__table__.c.wamid)
TYPE_MAX = _length(Message.__table__.c.type)
META_ID_MAX = _length(Conversation.__table__.c.phone_number_id)
WA_ID_MAX = _length(Conversation.__table__.c.wa_id)
USER_ID_MAX = _length(Conversation.__table__.c.user_id)
NAME_MAX = _length(Conversation.__table__.c.profile_name)
DISPLAY_NUMBER_MAX = _length(Conversation.__table__.c.display_phone_number)
STATUS_MAX = _length(MessageStatus.__table__.c.status)
RECIPIENT_MAX = _length(MessageStatus.__table__.c.recipient_id)
EVENT_NAME_MAX = _length(AutomaticEvent.__table__.c.event_name)
CLICK_ID_MAX = _length(AutomaticEvent.__table__.c.ctwa_clid)
FIELD_MAX = _length(WebhookNotice.__table__.c.field)
INT32 = 2**31  # notice codes are INTEGER columns


def _str(value: Any) -> str | None:
    """A non-empty string, or None; numbers Meta sends as strings elsewhere are accepted."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _id(value: Any, limit: int) -> str | None:
    """An identifier that fits its column, or None (treated as missing: a notice, not a crash)."""
    text = _str(value)
    return text if text is not None and len(text) <= limit else None


def _clip(value: Any, limit: int) -> str | None:
    """Descriptive text, cut to its column."""
    text = _str(value)
    return text[:limit] if text is not None else None


def _code(value: Any) -> int | None:
    """An error code as the INTEGER column takes it (bools and huge numbers are not codes)."""
    if isinstance(value, int) and not isinstance(value, bool) and -INT32 <= value < INT32:
        return value
    return None


def _clean(text: str) -> str:
    """The string itself when a database can store it, else a copy with the offenders replaced."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    cleaned = text.replace("\x00", "\ufffd")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = cleaned.encode("utf-8", "replace").decode("utf-8")
    return cleaned if cleaned != text else text


def scrub(payload: dict[str, Any]) -> dict[str, Any]:
    """Make the parsed payload storable, in place: NUL and lone surrogates replaced.

    Both are valid JSON escapes (``\\u0000``, ``\\ud800``) but PostgreSQL refuses NUL in
    text and jsonb, and neither database driver can encode a lone surrogate. The raw body keeps
    the original bytes. Iterative, so that nesting the parser accepted cannot overflow here.
    """
    stack: list[Any] = [payload]
    while stack:
        node = stack.pop()
        pairs = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in pairs:
            if isinstance(value, str):
                cleaned = _clean(value)
                if cleaned is not value:
                    node[key] = cleaned
            elif isinstance(value, (dict, list)):
                stack.append(value)
            if isinstance(key, str):
                cleaned_key = _clean(key)
                if cleaned_key is not key:
                    node[cleaned_key] = node.pop(key)
    return payload


# What scrub replaces can only come from a JSON escape: the parser refuses raw control
# characters in strings, and UTF-8 decoding refuses encoded surrogates.
_SCRUBBED_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def needs_scrub(raw: bytes) -> bool:
    """Whether the payload parsed from ``raw`` may hold what ``scrub`` replaces (walking a
    payload costs ~10 % of applying a plain delivery; most bodies cannot need it)."""
    return _SCRUBBED_ESCAPES.search(raw) is not None


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
    kind = _str(msg.get("type"))
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
    payload = scrub(payload)
    entries = payload.get("entry")
    if not isinstance(entries, list):
        bodies = on_premises_bodies(payload)
        if bodies is None:
            _orphan_notice(
                session,
                delivery_id,
                "neither the Cloud API shape (entry[]) nor the On-Premises shape "
                "(contacts, messages, statuses): kept, nothing applied",
                payload,
                kind="unknown_shape",
            )
            return 1
        for body in bodies:
            items += _process_on_premises(session, services, delivery_id, body)
        return items
    for entry in entries:
        entry = _dict(entry)
        waba_id = _id(entry.get("id"), META_ID_MAX)
        if waba_id is None or not (waba_id.isascii() and waba_id.isdigit()):
            _orphan_notice(
                session, delivery_id, "entry without a WhatsApp Business Account id", entry
            )
            continue
        store.ensure_account(session, waba_id, services.known_accounts)
        for change in _list(entry.get("changes")):
            change = _dict(change)
            value = _dict(change.get("value"))
            metadata = _dict(value.get("metadata"))
            ctx = ChangeContext(
                session=session,
                services=services,
                delivery_id=delivery_id,
                waba_id=waba_id,
                field=_clip(change.get("field"), FIELD_MAX) or "",
                value=value,
                phone_number_id=_id(metadata.get("phone_number_id"), META_ID_MAX),
                display_phone_number=_id(metadata.get("display_phone_number"), DISPLAY_NUMBER_MAX),
            )
            items += _process_change(ctx)
    return items


def _orphan_notice(
    session: Session, delivery_id: int, message: str, payload: Any, *, kind: str = "malformed"
) -> None:
    session.execute(
        insert(WebhookNotice).values(
            delivery_id=delivery_id, kind=kind, message=message, payload=payload
        )
    )


ON_PREMISES_KEYS = ("contacts", "messages", "statuses")


def on_premises_bodies(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The On-Premises API bodies of a delivery (at the top level, or each item of
    ``data``), or None when it is not that shape."""
    if any(isinstance(payload.get(key), list) for key in ON_PREMISES_KEYS):
        return [payload]
    data = payload.get("data")
    if isinstance(data, list) and data:
        bodies = [_dict(item) for item in data]
        if all(any(isinstance(b.get(key), list) for key in ON_PREMISES_KEYS) for b in bodies):
            return bodies
    return None


# The settings an On-Premises delivery needs: it names neither account nor number.
ON_PREMISES_SETTINGS = (
    ("waba_id", "WACONV_WABA_ID"),
    ("phone_number_id", "WACONV_PHONE_NUMBER_ID"),
)


def _process_on_premises(
    session: Session, services: Services, delivery_id: int, body: dict[str, Any]
) -> int:
    """An On-Premises body is the ``value`` of a Cloud ``messages`` change without its
    metadata: applied through the same code, for the default account and number."""
    settings = services.settings
    missing = [env for name, env in ON_PREMISES_SETTINGS if not getattr(settings, name)]
    if missing:
        _orphan_notice(
            session,
            delivery_id,
            f"On-Premises delivery kept without effect: set {' and '.join(missing)}, then "
            f"run `waconv webhooks replay --id {delivery_id}`",
            body,
            kind="missing_setting",
        )
        return 1
    store.ensure_account(session, settings.waba_id, services.known_accounts)
    ctx = ChangeContext(
        session=session,
        services=services,
        delivery_id=delivery_id,
        waba_id=settings.waba_id,
        field="messages",
        value=body,
        phone_number_id=settings.phone_number_id,
        display_phone_number=None,
    )
    return _process_change(ctx)


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
        for action in _list(ctx.value.get("user_actions")):
            _process_user_action(ctx, _dict(action), contacts)
            items += 1
        for error in _list(ctx.value.get("errors")):
            error = _dict(error)
            ctx.notice(
                "error",
                error,
                code=_code(error.get("code")),
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
    one_list = _ONE_LIST_FIELDS.get(ctx.field)
    if one_list is not None:
        key, process = one_list
        listed = _list(ctx.value.get(key) or ctx.value.get(ctx.field))
        for item in listed:
            process(ctx, _dict(item))
        return len(listed)
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
    wamid = _id(msg.get("id"), WAMID_MAX)
    if wamid is None:
        ctx.notice("malformed", msg, message="message without an id")
        return
    if ctx.phone_number_id is None:
        ctx.notice("malformed", msg, message="message without metadata.phone_number_id")
        return
    contact = _contact_for(msg, contacts)
    wa_id = _id(msg.get("from"), WA_ID_MAX) or _id(contact.get("wa_id"), WA_ID_MAX)
    user_id = _id(msg.get("from_user_id"), USER_ID_MAX) or _id(contact.get("user_id"), USER_ID_MAX)
    kind = _clip(msg.get("type"), TYPE_MAX) or "unknown"
    change = _system_change(msg, wa_id, user_id) if kind == "system" else None
    if change is not None:
        # The sender of an identity change may be unnamed: the change's own ids name the user.
        wa_id = wa_id or change.previous_wa_id or change.wa_id
        user_id = user_id or change.previous_user_id or change.user_id
    if wa_id is None and user_id is None:
        ctx.notice("malformed", msg, message="message with neither a wa_id nor a user_id")
        return
    timestamp = parse_timestamp(msg.get("timestamp"))
    if timestamp is None:
        ctx.notice("malformed", msg, message="message timestamp missing; time of receipt used")
        timestamp = utcnow()
    profile = _dict(contact.get("profile"))
    group_id = _id(msg.get("group_id"), USER_ID_MAX)
    referral = msg.get("referral")
    # A group message never credits the one-to-one conversation with a click.
    referral = referral if isinstance(referral, dict) and group_id is None else None

    conversation, created = store.resolve_conversation(
        ctx.session,
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        display_phone_number=ctx.display_phone_number,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=_clip(profile.get("name"), NAME_MAX),
        username=_clip(profile.get("username"), NAME_MAX)
        or _clip(contact.get("username"), NAME_MAX),
        parent_user_id=_id(msg.get("from_parent_user_id"), USER_ID_MAX)
        or _id(contact.get("parent_user_id"), USER_ID_MAX),
        first_state=store.first_message_state(timestamp, referral),
    )
    text = message_text(msg)
    row = {
        "wamid": wamid,
        "conversation_id": conversation.id,
        "delivery_id": ctx.delivery_id,
        "type": kind,
        "timestamp": timestamp,
        "text": text,
        "payload": msg,
        "origin": Message.GROUP if group_id else None,
        "group_id": group_id,
    }
    message_id = insert_or_ignore(ctx.session, Message, row)
    if message_id is None:  # seen before: a redelivery takes no second effect
        if created:
            # Its sender ids differ from the first delivery's (a BSUID added since): the
            # conversation just made for it holds nothing and goes. Undone here, on this
            # rare path, rather than a lookup of the message before every new conversation.
            ctx.session.delete(conversation)
        return

    store.record_activity(conversation, timestamp)
    if group_id is not None:
        return  # stored; rules look only at what the user says to the business
    if referral is not None:
        store.record_click(ctx.session, conversation, wamid, referral, timestamp)
    if change is not None:
        _apply_change(ctx, change, msg)
        return
    if kind == "unsupported" or kind not in KNOWN_MESSAGE_TYPES:
        errors = _list(msg.get("errors"))
        first = _dict(errors[0]) if errors else {}
        ctx.notice(
            "unsupported_message",
            msg,
            code=_code(first.get("code")),
            title=_str(first.get("title")),
            message=f"message type {kind!r} kept without action",
        )
    ctx.session.flush()

    if (
        store.click_id(referral) is not None
        and conversation.last_message_at is not None
        and conversation.last_message_at > timestamp
    ):
        # A click that arrived after messages written since: those that saw no click
        # when they were processed are looked at again, under this one.
        for earlier in store.messages_without_a_click(ctx.session, conversation, timestamp, wamid):
            _fire_rules_on_stored(ctx, conversation, earlier)
    _fire_rules(ctx, conversation, wamid, kind, text, timestamp, msg)


def _fire_rules_on_stored(ctx: ChangeContext, conversation: Conversation, message: Any) -> None:
    """The rules on a message already stored, looked at again under a click that came later."""
    payload = message.payload if isinstance(message.payload, dict) else {}
    _fire_rules(
        ctx, conversation, message.wamid, message.type, message.text, message.timestamp, payload
    )


def _fire_rules(
    ctx: ChangeContext,
    conversation: Conversation,
    wamid: str,
    kind: str,
    text: str | None,
    timestamp: datetime,
    msg: dict[str, Any],
) -> None:
    trigger = "order" if kind == "order" else "message" if kind in MESSAGE_TRIGGER_TYPES else None
    if trigger is None:
        return
    refusals = fire_message_rules(
        ctx.session, ctx.services.rules, conversation, trigger, wamid, kind, text, timestamp, msg
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


def _system_change(
    msg: dict[str, Any], wa_id: str | None, user_id: str | None
) -> identity.IdChange | None:
    """The identity change a ``system`` message announces, if it is one (a change that names
    no new id is kept as an ordinary system message)."""
    system = _dict(msg.get("system"))
    signal = _str(system.get("type"))
    body_ids = identity.ids_in_body(_str(system.get("body"))) or (None, None)
    parent = _id(system.get("parent_user_id"), USER_ID_MAX)
    stated_previous = _id(msg.get("previous_user_id"), USER_ID_MAX) or _id(
        system.get("previous_user_id"), USER_ID_MAX
    )
    if signal == "user_changed_user_id":
        new = _id(system.get("user_id"), USER_ID_MAX) or _id(body_ids[1], USER_ID_MAX)
        if new is None:
            return None
        sender = user_id if user_id != new else None
        previous = stated_previous or sender or _id(body_ids[0], USER_ID_MAX)
        return identity.IdChange(
            signal, previous_user_id=previous, user_id=new, wa_id=wa_id, parent_user_id=parent
        )
    if signal == "user_changed_number":
        new_wa_id = (
            _id(system.get("wa_id"), WA_ID_MAX)
            or _id(system.get("new_wa_id"), WA_ID_MAX)
            or _id(body_ids[1], WA_ID_MAX)
        )
        if new_wa_id is None:
            return None
        previous_wa_id = wa_id if wa_id != new_wa_id else _id(body_ids[0], WA_ID_MAX)
        # system.user_id: the user's business-scoped id after the change.
        new_user_id = _id(system.get("user_id"), USER_ID_MAX)
        previous_user_id = stated_previous or (user_id if user_id != new_user_id else None)
        return identity.IdChange(
            signal,
            previous_wa_id=previous_wa_id,
            wa_id=new_wa_id,
            previous_user_id=previous_user_id if new_user_id else None,
            user_id=new_user_id or user_id,
            parent_user_id=parent,
        )
    return None


def _apply_change(ctx: ChangeContext, change: identity.IdChange, payload: Any) -> None:
    applied = identity.apply(ctx.session, ctx.waba_id, change, ctx.delivery_id)
    if applied.refusal:
        ctx.notice("identity_conflict", payload, message=applied.refusal)
        log.warning("identity.conflict waba_id=%s signal=%s", ctx.waba_id, change.signal)
        return
    # Messages a merge brought under a click: looked at as if the click had come late.
    for conversation in applied.conversations:
        for earlier in applied.to_review or ():
            if earlier.conversation_id != conversation.id:
                continue
            _fire_rules_on_stored(ctx, conversation, earlier)


def _process_user_id_update(ctx: ChangeContext, update: dict[str, Any]) -> None:
    """A ``user_id_update`` item: ``user_id`` and ``parent_user_id`` as previous/current."""
    user_id = _dict(update.get("user_id"))
    parent = _dict(update.get("parent_user_id"))
    change = identity.IdChange(
        "user_id_update",
        previous_user_id=_id(user_id.get("previous"), USER_ID_MAX),
        user_id=_id(user_id.get("current"), USER_ID_MAX),
        wa_id=_id(update.get("wa_id"), WA_ID_MAX),
        parent_user_id=_id(parent.get("current"), USER_ID_MAX),
    )
    if change.user_id is None and change.parent_user_id is None:
        ctx.notice("malformed", update, message="user_id_update without a current user_id")
        return
    if not change.links() and not change.ids():
        ctx.notice("malformed", update, message="user_id_update naming no user")
        return
    _apply_change(ctx, change, update)


ECHO_FIELDS = frozenset({"message_echoes", "smb_message_echoes"})


def _process_echo(ctx: ChangeContext, echo: dict[str, Any]) -> None:
    """A message the business sent (from its app or another API client): stored in the
    user's conversation as the business's, never looked at by rules."""
    wamid = _id(echo.get("id"), WAMID_MAX)
    wa_id = _id(echo.get("to"), WA_ID_MAX)
    user_id = _id(echo.get("to_user_id"), USER_ID_MAX)
    if wamid is None or ctx.phone_number_id is None or (wa_id is None and user_id is None):
        ctx.notice("malformed", echo, message="echo without id, recipient or phone number id")
        return
    timestamp = parse_timestamp(echo.get("timestamp")) or utcnow()
    conversation, _ = store.resolve_conversation(
        ctx.session,
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        display_phone_number=ctx.display_phone_number,
        wa_id=wa_id,
        user_id=user_id,
        first_state={},
    )
    _store_other(ctx, conversation, wamid, echo, timestamp, Message.ECHO)


def _process_user_action(
    ctx: ChangeContext, action: dict[str, Any], contacts: list[dict[str, Any]]
) -> None:
    """A marketing-message link click: stored in the user's conversation; it has no wamid,
    so its click id (or its content) keys it, and a redelivery stores nothing new."""
    contact = contacts[0] if len(contacts) == 1 else {}
    wa_id = _id(action.get("wa_id"), WA_ID_MAX) or _id(contact.get("wa_id"), WA_ID_MAX)
    user_id = _id(action.get("user_id"), USER_ID_MAX) or _id(contact.get("user_id"), USER_ID_MAX)
    if ctx.phone_number_id is None or (wa_id is None and user_id is None):
        ctx.notice("user_action", action, message="user action kept: no user to store it with")
        return
    data = _dict(action.get("marketing_messages_link_click_data"))
    key = _str(data.get("click_id")) or _str(data.get("tracking_token"))
    if key is None:
        key = hashlib.sha256(json.dumps(action, sort_keys=True).encode()).hexdigest()
    conversation, _ = store.resolve_conversation(
        ctx.session,
        waba_id=ctx.waba_id,
        phone_number_id=ctx.phone_number_id,
        display_phone_number=ctx.display_phone_number,
        wa_id=wa_id,
        user_id=user_id,
        first_state={},
    )
    timestamp = parse_timestamp(action.get("timestamp")) or utcnow()
    wamid = f"user_action.{key}"[:WAMID_MAX]
    _store_other(ctx, conversation, wamid, action, timestamp, Message.USER_ACTION)


def _store_other(
    ctx: ChangeContext,
    conversation: Conversation,
    wamid: str,
    payload: dict[str, Any],
    timestamp: datetime,
    origin: str,
) -> None:
    kind = _clip(payload.get("type") or payload.get("action_type"), TYPE_MAX) or "unknown"
    insert_or_ignore(
        ctx.session,
        Message,
        {
            "wamid": wamid,
            "conversation_id": conversation.id,
            "delivery_id": ctx.delivery_id,
            "type": kind,
            "timestamp": timestamp,
            "text": message_text(payload),
            "payload": payload,
            "origin": origin,
        },
    )


def _process_status(ctx: ChangeContext, status: dict[str, Any]) -> None:
    wamid = _id(status.get("id"), WAMID_MAX)
    state = _id(status.get("status"), STATUS_MAX)
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
            "recipient_id": _id(status.get("recipient_id"), RECIPIENT_MAX)
            or _id(status.get("recipient_user_id"), RECIPIENT_MAX),
            "errors": errors if isinstance(errors, list) else None,
            "payload": status,
            "delivery_id": ctx.delivery_id,
        },
    )


def _process_automatic_event(ctx: ChangeContext, event: dict[str, Any]) -> None:
    wamid = _id(event.get("id"), WAMID_MAX)
    name = _id(event.get("event_name"), EVENT_NAME_MAX)
    timestamp = parse_timestamp(event.get("timestamp"))
    if wamid is None or name is None or timestamp is None:
        ctx.notice(
            "malformed", event, message="automatic event without id, event_name or timestamp"
        )
        return
    clid = _id(event.get("ctwa_clid"), CLICK_ID_MAX)
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


# Fields whose value holds one list of items, each applied alone: (the list's key, how).
_ONE_LIST_FIELDS: dict[str, tuple[str, Callable[[ChangeContext, dict[str, Any]], None]]] = {
    "automatic_events": ("automatic_events", _process_automatic_event),
    "user_id_update": ("user_id_update", _process_user_id_update),
    **{field: ("message_echoes", _process_echo) for field in ECHO_FIELDS},
}
