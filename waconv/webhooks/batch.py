"""Apply a batch of plain deliveries with a few set-based statements.

The delivery Meta sends most is a user's message, often their first, after tapping an ad.
Applied one by one it costs ~6 statements and the ORM's work on each (bench/PROFILE.md); here
the messages of new users in a batch take one statement per table: one lookup of the users
and their message ids, then one INSERT each for conversations, messages, clicks and the
conversions the rules fire. Everything else (a user already known, an id Meta changed, a
group, an echo, a status, an order, a system message, anything malformed) goes through
``process_payload``, in the batch's order, so each promise is kept by the code that keeps it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, literal, null, or_, select, union_all
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.conversations import store
from waconv.conversions.events import InvalidConversion
from waconv.conversions.outbox import conversion_values, enqueue_many
from waconv.models import Click, Conversation, Conversion, Message, UserAlias, WebhookNotice
from waconv.rules.firing import rule_event_id
from waconv.services import Services
from waconv.webhooks import processing as p

log = logging.getLogger(__name__)

# Message types a new user's message can have and still be applied set-based: ``system``
# (identity changes) and ``order`` (its custom_data) go one by one, and so does any type
# waconv does not know (it leaves a notice).
PLAIN_TYPES = p.KNOWN_MESSAGE_TYPES - {"system", "order"}
# A ``messages`` change holding anything else (statuses, errors, user_actions) goes one by one.
PLAIN_VALUE_KEYS = frozenset({"messaging_product", "metadata", "contacts", "messages"})

# (delivery id, parsed payload) in, (delivery id, items looked at) out.
Delivery = tuple[int, dict[str, Any]]
ApplyOne = Callable[[Session, Services, int, dict[str, Any]], int]


@dataclass
class Plain:
    """One message the set-based path applies, read as ``_process_message`` reads it."""

    delivery_id: int
    waba_id: str
    phone_number_id: str
    display_phone_number: str | None
    wamid: str
    wa_id: str | None
    user_id: str | None
    kind: str
    text: str | None
    timestamp: datetime
    message: dict[str, Any]
    referral: dict[str, Any] | None
    profile_name: str | None
    username: str | None
    parent_user_id: str | None

    def user_keys(self) -> list[tuple[str, str, str]]:
        keys = [(self.phone_number_id, "wa_id", self.wa_id)] if self.wa_id else []
        return keys + ([(self.phone_number_id, "user_id", self.user_id)] if self.user_id else [])


def plain_messages(delivery_id: int, payload: dict[str, Any]) -> list[Plain] | None:
    """The messages of a scrubbed Cloud API delivery if every item in it is a plain
    message, else None (the delivery goes through ``process_payload``)."""
    entries = payload.get("entry")
    if not isinstance(entries, list) or not entries:
        return None
    found: list[Plain] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        waba_id = p._id(entry.get("id"), p.META_ID_MAX)
        changes = entry.get("changes")
        if waba_id is None or not (waba_id.isascii() and waba_id.isdigit()):
            return None
        if not isinstance(changes, list):
            return None
        for change in changes:
            if not isinstance(change, dict) or change.get("field") != "messages":
                return None
            value = change.get("value")
            if not isinstance(value, dict) or not PLAIN_VALUE_KEYS.issuperset(value):
                return None
            messages = value.get("messages")
            if not isinstance(messages, list) or not messages:
                return None
            metadata = p._dict(value.get("metadata"))
            phone_number_id = p._id(metadata.get("phone_number_id"), p.META_ID_MAX)
            if phone_number_id is None:
                return None
            display = p._id(metadata.get("display_phone_number"), p.DISPLAY_NUMBER_MAX)
            contacts = [p._dict(c) for c in p._list(value.get("contacts"))]
            for msg in messages:
                plain = _plain(delivery_id, waba_id, phone_number_id, display, msg, contacts)
                if plain is None:
                    return None
                found.append(plain)
    return found


def _plain(
    delivery_id: int,
    waba_id: str,
    phone_number_id: str,
    display: str | None,
    msg: Any,
    contacts: list[dict[str, Any]],
) -> Plain | None:
    if not isinstance(msg, dict) or "group_id" in msg:
        return None
    wamid = p._id(msg.get("id"), p.WAMID_MAX)
    kind = msg.get("type")
    timestamp = p.parse_timestamp(msg.get("timestamp"))
    if wamid is None or kind not in PLAIN_TYPES or timestamp is None:
        return None
    contact = p._contact_for(msg, contacts)
    wa_id = p._id(msg.get("from"), p.WA_ID_MAX) or p._id(contact.get("wa_id"), p.WA_ID_MAX)
    user_id = p._id(msg.get("from_user_id"), p.USER_ID_MAX) or p._id(
        contact.get("user_id"), p.USER_ID_MAX
    )
    if wa_id is None and user_id is None:
        return None
    profile = p._dict(contact.get("profile"))
    referral = msg.get("referral")
    return Plain(
        delivery_id=delivery_id,
        waba_id=waba_id,
        phone_number_id=phone_number_id,
        display_phone_number=display,
        wamid=wamid,
        wa_id=wa_id,
        user_id=user_id,
        kind=kind,
        text=p.message_text(msg),
        timestamp=timestamp,
        message=msg,
        referral=referral if isinstance(referral, dict) else None,
        profile_name=p._clip(profile.get("name"), p.NAME_MAX),
        username=p._clip(profile.get("username"), p.NAME_MAX)
        or p._clip(contact.get("username"), p.NAME_MAX),
        parent_user_id=p._id(msg.get("from_parent_user_id"), p.USER_ID_MAX)
        or p._id(contact.get("parent_user_id"), p.USER_ID_MAX),
    )


def apply_batch(
    session: Session, services: Services, deliveries: Iterable[Delivery], one: ApplyOne
) -> list[tuple[int, int]]:
    """Apply deliveries (scrubbed where ``needs_scrub`` says so) in their order: runs of
    plain ones set-based, the others with ``one`` (``process_payload``). Returns (delivery
    id, items) for each. Raises on any failure: the caller then applies the same deliveries
    one by one, each in a savepoint."""
    done: list[tuple[int, int]] = []
    run: list[tuple[int, dict[str, Any], list[Plain]]] = []
    for delivery_id, payload in deliveries:
        plains = plain_messages(delivery_id, payload)
        if plains is not None:
            run.append((delivery_id, payload, plains))
            continue
        done += _apply_run(session, services, run, one)
        run = []
        done.append((delivery_id, one(session, services, delivery_id, payload)))
    done += _apply_run(session, services, run, one)
    return done


def _apply_run(
    session: Session,
    services: Services,
    run: list[tuple[int, dict[str, Any], list[Plain]]],
    one: ApplyOne,
) -> list[tuple[int, int]]:
    """A run of plain deliveries: those whose users are all new (no conversation, no alias,
    named once in the run) and whose messages are new are applied together; the others,
    which share no user with them, one by one after them."""
    if not run:
        return []
    plains = [plain for _, _, found in run for plain in found]
    shared = Counter(key for plain in plains for key in (plain.wamid, *plain.user_keys()))
    known = _known(session, plains)
    together: list[tuple[int, list[Plain]]] = []
    alone: list[tuple[int, dict[str, Any]]] = []
    for delivery_id, payload, found in run:
        if all(
            plain.wamid not in known
            and shared[plain.wamid] == 1
            and plain.waba_id + ":" + (plain.wa_id or "") not in known
            and plain.waba_id + ":" + (plain.user_id or "") not in known
            and all(shared[key] == 1 and key not in known for key in plain.user_keys())
            for plain in found
        ):
            together.append((delivery_id, found))
        else:
            alone.append((delivery_id, payload))
    done = apply_plain(session, services, [plain for _, found in together for plain in found])
    out = [(delivery_id, len(found)) for delivery_id, found in together]
    assert done == sum(n for _, n in out)
    for delivery_id, payload in alone:
        out.append((delivery_id, one(session, services, delivery_id, payload)))
    return out


def _known(session: Session, plains: list[Plain]) -> set[Any]:
    """What the database already holds of these messages' users and ids, in one query:
    conversations' (phone number, kind, id), aliases' ``waba:id`` and message ids."""
    wa_ids = sorted({plain.wa_id for plain in plains if plain.wa_id})
    user_ids = sorted({plain.user_id for plain in plains if plain.user_id})
    wamids = sorted({plain.wamid for plain in plains})
    ids = sorted({*wa_ids, *user_ids})
    lookup: Any = union_all(
        select(
            literal("c"), Conversation.phone_number_id, Conversation.wa_id, Conversation.user_id
        ).where(or_(Conversation.wa_id.in_(wa_ids), Conversation.user_id.in_(user_ids))),
        select(literal("a"), UserAlias.waba_id, UserAlias.previous, UserAlias.current).where(
            or_(UserAlias.previous.in_(ids), UserAlias.current.in_(ids))
        ),
        select(literal("m"), Message.wamid, null(), null()).where(Message.wamid.in_(wamids)),
    )
    known: set[Any] = set()
    for kind, first, second, third in session.execute(lookup):
        if kind == "c":  # a conversation: phone number, wa_id, user_id
            known.update(((first, "wa_id", second), (first, "user_id", third)))
        elif kind == "a":  # an alias: waba, previous, current
            known.update((f"{first}:{second}", f"{first}:{third}"))
        else:  # a message id
            known.add(first)
    return known


def apply_plain(session: Session, services: Services, plains: list[Plain]) -> int:
    """New users' messages: their conversations (with their first message's times and
    click), messages, clicks and the conversions their rules fire, one INSERT per table.
    Returns how many messages were applied. A unique key another transaction took in the
    meantime raises IntegrityError: the caller applies the batch again one by one."""
    if not plains:
        return 0
    for waba_id in dict.fromkeys(plain.waba_id for plain in plains):
        store.ensure_account(session, waba_id, services.known_accounts)
    connection = session.connection()
    conversation_ids = connection.execute(
        _INSERT_CONVERSATIONS,
        [
            {
                **_NO_CLICK,
                **store.first_message_state(plain.timestamp, plain.referral),
                "waba_id": plain.waba_id,
                "phone_number_id": plain.phone_number_id,
                "display_phone_number": plain.display_phone_number,
                "wa_id": plain.wa_id,
                "user_id": plain.user_id,
                "profile_name": plain.profile_name,
                "username": plain.username,
                "parent_user_id": plain.parent_user_id,
            }
            for plain in plains
        ],
    )
    # Each new conversation's ids are unique in the batch (see _apply_run): they name its row.
    # (Asking for the rows in parameter order made SQLite insert them one by one.)
    by_user = {tuple(row[1:]): row[0] for row in conversation_ids}
    ids = [by_user[(plain.phone_number_id, plain.wa_id, plain.user_id)] for plain in plains]
    inserts = _INSERT[connection.dialect.name]
    connection.execute(
        inserts[Message],
        [
            {
                "wamid": plain.wamid,
                "conversation_id": conversation_id,
                "delivery_id": plain.delivery_id,
                "type": plain.kind,
                "timestamp": plain.timestamp,
                "text": plain.text,
                "payload": plain.message,
                "origin": None,
                "group_id": None,
            }
            for plain, conversation_id in zip(plains, ids, strict=True)
        ],
    )
    clicks = [
        store.click_row(conversation_id, plain.wamid, plain.referral, plain.timestamp)
        for plain, conversation_id in zip(plains, ids, strict=True)
        if plain.referral is not None
    ]
    if clicks:
        connection.execute(inserts[Click], clicks)
    _fire(session, services, plains, ids)
    return len(plains)


# A conversation without a referral starts with no click: the same keys in every row of the
# INSERT (executemany needs them), with the values the ORM would leave (SQL NULL, not JSON
# null, in ``referral``).
_NO_CLICK = {"referral": null(), "clicked_at": None, "ctwa_clid": None}
_INSERT_CONVERSATIONS = insert(Conversation).returning(
    Conversation.id, Conversation.phone_number_id, Conversation.wa_id, Conversation.user_id
)
# Each table's rows in one INSERT. On PostgreSQL, RETURNING makes SQLAlchemy send them as one
# statement ("insertmanyvalues"): a plain executemany is one statement per row on psycopg, and
# the click rollup's statement trigger (migration 0009) then ran once per click, 0.3 ms each
# under its lock (5,000 deliveries: 652 -> 1,183 a second). SQLite's executemany is faster as
# it is (2,960 against 2,247 with RETURNING): its rollup triggers run per row anyway.
_INSERT: dict[str, dict[type[Message | Click], Any]] = {
    "postgresql": {model: insert(model).returning(model.id) for model in (Message, Click)},
    "sqlite": {model: insert(model) for model in (Message, Click)},
}


def _fire(session: Session, services: Services, plains: list[Plain], ids: list[int]) -> None:
    """The message rules, under each new conversation's own click (the only one it has, at
    its message's time): their conversions in one INSERT, refusals as notices."""
    rules = services.rules.for_trigger("message")
    rows: list[dict[str, Any]] = []
    for plain, conversation_id in zip(plains, ids, strict=True):
        clid = store.click_id(plain.referral)
        if clid is None or plain.kind not in p.MESSAGE_TRIGGER_TYPES:
            continue
        for rule in rules:
            if not rule.matches(plain.text, plain.kind):
                continue
            event_id = rule_event_id(rule, clid, plain.wamid)
            try:
                rows.append(
                    conversion_values(
                        session,
                        event_id=event_id,
                        waba_id=plain.waba_id,
                        ctwa_clid=clid,
                        event_name=rule.event,
                        event_time=min(plain.timestamp, utcnow()),
                        source="rule",
                        custom_data=rule.event_custom_data(None) or None,
                        conversation_id=conversation_id,
                        rule_name=rule.name,
                        expire_if_stale=True,
                    )
                )
            except InvalidConversion as exc:
                log.warning("rule.refused rule=%s reason=%s", rule.name, exc)
                if session.scalar(select(Conversion.id).where(Conversion.event_id == event_id)):
                    continue  # fired before and stored then: as enqueue answers
                session.execute(
                    insert(WebhookNotice).values(
                        delivery_id=plain.delivery_id,
                        waba_id=plain.waba_id,
                        field="messages",
                        kind="rule_refused",
                        message=f"rule {rule.name!r}: {exc}",
                        payload=plain.message,
                    )
                )
    enqueue_many(session, rows)
