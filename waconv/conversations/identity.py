"""Users whose ids change: Meta's three identity signals, and the merges they call for.

A user is one person whatever ids Meta uses for them: ``wa_id`` (the phone), the
business-scoped ``user_id`` (BSUID) and a ``parent_user_id``. Meta says an id changed with a
``system`` message ``user_changed_user_id``, a ``user_id_update`` change, or a ``system``
message ``user_changed_number``; each becomes an ``IdChange``. ``apply`` keeps every earlier
id as a ``UserAlias`` (the old id keeps finding the user, also for ids not seen yet) and
moves the user's conversations to the new ids. Meta does not promise order: when messages
from the new id came first, their conversation is merged into the user's older one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.orm import Session

from waconv.db import insert_or_ignore
from waconv.models import (
    AutomaticEvent,
    Click,
    ConnectorReceipt,
    Conversation,
    Conversion,
    CustomerIdentifier,
    Message,
    UserAlias,
)

log = logging.getLogger(__name__)

KINDS = ("wa_id", "user_id")
# system.body of user_changed_user_id / user_changed_number: "... changed from OLD to NEW".
_CHANGED_FROM = re.compile(r"changed from (\S+) to (\S+?)\.?\s*$")

# Conversation children that follow a merge (their conversation_id moves).
_CHILDREN = (Message, Click, Conversion, AutomaticEvent, CustomerIdentifier, ConnectorReceipt)


def ids_in_body(body: str | None) -> tuple[str, str] | None:
    """OLD and NEW from a system body "User X changed from OLD to NEW"."""
    if not body:
        return None
    found = _CHANGED_FROM.search(body)
    return (found.group(1), found.group(2)) if found else None


@dataclass(frozen=True)
class IdChange:
    """What one signal says: the user's ids before and after (None: not said)."""

    signal: str
    previous_wa_id: str | None = None
    previous_user_id: str | None = None
    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None

    def links(self) -> list[tuple[str, str, str]]:
        """(kind, previous, current) for each id that changed."""
        out = []
        for kind in KINDS:
            before, after = getattr(self, f"previous_{kind}"), getattr(self, kind)
            if before and after and before != after:
                out.append((kind, before, after))
        return out

    def ids(self) -> set[str]:
        values = (self.previous_wa_id, self.previous_user_id, self.wa_id, self.user_id)
        return {v for v in values if v}

    def previous(self) -> set[str]:
        return {v for v in (self.previous_wa_id, self.previous_user_id) if v}


@dataclass
class Applied:
    """The outcome of a change: the user's conversations, or why nothing changed."""

    conversations: list[Conversation]
    refusal: str | None = None
    # Messages that had no click in effect in their own conversation, merged under one that
    # has: the caller looks at them again (their event ids make a second look harmless).
    to_review: list[Message] | None = None


def apply(session: Session, waba_id: str, change: IdChange, delivery_id: int | None) -> Applied:
    """Record the change and move the user's conversations of this account to the new ids.

    A contradiction (the new id already claimed for another user) changes nothing and is
    answered as ``refusal``, for the caller's notice.
    """
    change = _with_known_previous(session, waba_id, change)
    refusal = _contradiction(session, waba_id, change)
    if refusal:
        return Applied([], refusal)
    conversations = _holding(session, waba_id, change.ids())
    by_number: dict[str, list[Conversation]] = {}
    for conversation in conversations:
        by_number.setdefault(conversation.phone_number_id, []).append(conversation)
    plans = []
    for group in by_number.values():
        final, refusal = _final_ids(group, change)
        if refusal:
            return Applied([], refusal)
        plans.append((group, final))
    for kind, previous, current in change.links():
        _link(session, waba_id, kind, previous, current, delivery_id)
    kept: list[Conversation] = []
    to_review: list[Message] = []
    for group, final in plans:
        survivor, review = _merge(session, group)
        to_review.extend(review)
        for kind in KINDS:
            if final[kind] is not None:
                setattr(survivor, kind, final[kind])
        if change.parent_user_id:
            survivor.parent_user_id = change.parent_user_id
        kept.append(survivor)
    session.flush()
    if kept:
        log.info(
            "identity.changed signal=%s conversations=%s merged=%s",
            change.signal,
            len(kept),
            len(conversations) - len(kept),
        )
    return Applied(kept, None, to_review)


def _with_known_previous(session: Session, waba_id: str, change: IdChange) -> IdChange:
    """A change that does not say the earlier id, but names the user by their other id:
    the earlier id is the one their conversation holds."""
    for kind, other in (("user_id", "wa_id"), ("wa_id", "user_id")):
        new, known = getattr(change, kind), getattr(change, other)
        if getattr(change, f"previous_{kind}") or not (new and known):
            continue
        held = {
            getattr(c, kind)
            for c in _holding(session, waba_id, {known})
            if getattr(c, other) == known
        } - {None, new}
        if len(held) == 1:
            change = replace(change, **{f"previous_{kind}": held.pop()})
    return change


def _contradiction(session: Session, waba_id: str, change: IdChange) -> str | None:
    """The new id already stands for earlier ids that are not this user's."""
    for kind, _previous, current in change.links():
        claims = session.scalars(
            select(UserAlias.previous).where(
                UserAlias.waba_id == waba_id,
                UserAlias.kind == kind,
                UserAlias.current == current,
            )
        ).all()
        others = set(claims) - change.ids()
        if others:
            return (
                f"{change.signal}: {kind} {current} already replaced another user's {kind}; "
                "the change is kept as this notice and not applied"
            )
    return None


def _holding(session: Session, waba_id: str, ids: set[str]) -> list[Conversation]:
    if not ids:
        return []
    return list(
        session.scalars(
            select(Conversation)
            .where(
                Conversation.waba_id == waba_id,
                or_(Conversation.wa_id.in_(ids), Conversation.user_id.in_(ids)),
            )
            .order_by(Conversation.id)
            .with_for_update()
        )
    )


def _final_ids(
    group: list[Conversation], change: IdChange
) -> tuple[dict[str, str | None], str | None]:
    """The ids the merged conversation ends with; a refusal when the group holds two users
    (two different numbers, or two business-scoped ids, that the change does not explain)."""
    final: dict[str, str | None] = {}
    for kind in KINDS:
        stated = getattr(change, kind)
        before = getattr(change, f"previous_{kind}")
        held = {getattr(c, kind) for c in group} - {None, before}
        if stated:
            held.discard(stated)
        if held and (stated or len(held) > 1):
            return final, (
                f"{change.signal}: the {kind}s involved belong to different users; "
                "the change is kept as this notice and not applied"
            )
        final[kind] = stated or (held.pop() if held else None)
    return final, None


def _link(
    session: Session, waba_id: str, kind: str, previous: str, current: str, delivery_id: int | None
) -> None:
    # Earlier ids that meant ``previous`` now mean ``current``: one hop always reaches the user.
    session.execute(
        update(UserAlias)
        .where(UserAlias.waba_id == waba_id, UserAlias.kind == kind, UserAlias.current == previous)
        .values(current=current)
        .execution_options(synchronize_session=False)
    )
    # A user back on an id they had: it is current again, not an alias of itself.
    session.execute(
        delete(UserAlias)
        .where(UserAlias.waba_id == waba_id, UserAlias.previous == current)
        .execution_options(synchronize_session=False)
    )
    row = {
        "waba_id": waba_id,
        "kind": kind,
        "previous": previous,
        "current": current,
        "delivery_id": delivery_id,
    }
    if insert_or_ignore(session, UserAlias, row) is None:
        session.execute(
            update(UserAlias)
            .where(UserAlias.waba_id == waba_id, UserAlias.previous == previous)
            .values(current=current)
            .execution_options(synchronize_session=False)
        )


def _unclicked(session: Session, conversation: Conversation) -> list[Message]:
    """The conversation's own messages written before any click id it has (rules saw none)."""
    first_click = session.scalar(
        select(Click.clicked_at)
        .where(Click.conversation_id == conversation.id, Click.ctwa_clid.is_not(None))
        .order_by(Click.clicked_at)
        .limit(1)
    )
    query = select(Message).where(
        Message.conversation_id == conversation.id, Message.origin.is_(None)
    )
    if first_click is not None:
        query = query.where(Message.timestamp < first_click)
    return list(session.scalars(query.order_by(Message.timestamp, Message.id)))


def _merge(session: Session, group: list[Conversation]) -> tuple[Conversation, list[Message]]:
    """One conversation of those given (the oldest), holding everything the others held."""
    survivor, absorbed = group[0], group[1:]
    if not absorbed:
        return survivor, []
    review = [m for c in group for m in _unclicked(session, c)]
    for other in absorbed:
        # A digest both conversations hold is kept once (unique per conversation).
        held = select(CustomerIdentifier.field, CustomerIdentifier.value_sha256).where(
            CustomerIdentifier.conversation_id == survivor.id
        )
        session.execute(
            delete(CustomerIdentifier)
            .where(
                CustomerIdentifier.conversation_id == other.id,
                tuple_(CustomerIdentifier.field, CustomerIdentifier.value_sha256).in_(held),
            )
            .execution_options(synchronize_session=False)
        )
        for model in _CHILDREN:
            session.execute(
                update(model)
                .where(model.conversation_id == other.id)
                .values(conversation_id=survivor.id)
                .execution_options(synchronize_session=False)
            )
        _take_state(survivor, other)
        session.delete(other)
    # The absorbed rows go before the survivor takes their ids (unique per phone number).
    session.flush()
    for message in review:
        message.conversation_id = survivor.id
    return survivor, review


def _later(a: datetime | None, b: datetime | None) -> bool:
    return b is not None and (a is None or b > a)


def _take_state(survivor: Conversation, other: Conversation) -> None:
    """Activity times span both; the latest click wins, as record_click decides."""
    if other.first_message_at is not None and (
        survivor.first_message_at is None or other.first_message_at < survivor.first_message_at
    ):
        survivor.first_message_at = other.first_message_at
    if _later(survivor.last_message_at, other.last_message_at):
        survivor.last_message_at = other.last_message_at
        for name in ("profile_name", "username", "display_phone_number"):
            if getattr(other, name):
                setattr(survivor, name, getattr(other, name))
    if other.ctwa_clid and (
        survivor.ctwa_clid is None or _later(survivor.clicked_at, other.clicked_at)
    ):
        survivor.ctwa_clid = other.ctwa_clid
        survivor.referral = other.referral
        survivor.clicked_at = other.clicked_at
    elif survivor.ctwa_clid is None and _later(survivor.clicked_at, other.clicked_at):
        survivor.referral = other.referral
        survivor.clicked_at = other.clicked_at
    if survivor.parent_user_id is None:
        survivor.parent_user_id = other.parent_user_id


def previous_ids(session: Session, conversation: Conversation) -> list[str]:
    """Every earlier wa_id and user_id of the conversation's user, oldest first."""
    current = [v for v in (conversation.wa_id, conversation.user_id) if v]
    if not current:
        return []
    return list(
        session.scalars(
            select(UserAlias.previous)
            .where(UserAlias.waba_id == conversation.waba_id, UserAlias.current.in_(current))
            .order_by(UserAlias.id)
        )
    )


def current_of(user: str) -> Any:
    """The ids that ``user`` (an earlier id) now stands for, as a subquery."""
    return select(UserAlias.current).where(UserAlias.previous == user)


def is_alias(session: Session, waba_id: str, previous: str, current: str) -> bool:
    """Whether ``previous`` is an earlier id of the user now known as ``current``."""
    return (
        session.scalar(
            select(UserAlias.id).where(
                UserAlias.waba_id == waba_id,
                UserAlias.previous == previous,
                UserAlias.current == current,
            )
        )
        is not None
    )
