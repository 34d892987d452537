"""The conversation store: who talks to which business number, and which ad click brought them.

A conversation is keyed by the business phone number and the user, who is known by ``wa_id``
(phone-based), by the business-scoped ``user_id`` (2026 BSUID; the only id when the number is
withheld), or both.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, union_all
from sqlalchemy.orm import Session

from waconv.clock import isoformat
from waconv.conversations import identity
from waconv.db import insert_object_or_ignore, insert_or_ignore
from waconv.models import CLICK_ID, Account, Click, Conversation, Message, UserAlias

# The ad fields the admin API shows and the conversation keeps for its latest click.
AD_FIELDS = (
    "source_id",
    "source_type",
    "source_url",
    "headline",
    "body",
    "media_type",
    "image_url",
    "video_url",
    "thumbnail_url",
)


# session.info key: the WABA ids this transaction made sure of (see ensure_account).
ENSURED_ACCOUNTS = "waconv.ensured_accounts"


def ensure_account(session: Session, waba_id: str, known: Set[str] = frozenset()) -> None:
    """A WABA first seen in a webhook is registered with the default settings.

    ``known``: WABA ids registered in a committed transaction, which the caller keeps (per
    process), so that a busy account costs one INSERT per process, not one per delivery. The
    ids made sure of here are listed in ``session.info[ENSURED_ACCOUNTS]``, for the caller to
    remember once the transaction has committed.
    """
    if waba_id in known or waba_id in session.info.get(ENSURED_ACCOUNTS, ()):
        return
    insert_or_ignore(session, Account, {"waba_id": waba_id, "status": Account.ACTIVE})
    session.info.setdefault(ENSURED_ACCOUNTS, set()).add(waba_id)


def _alias(known: str, wanted: str, key: str) -> Any:
    """The id an alias links to id ``key`` (scalar, at most one: an index lookup, and the
    planner can still use the conversations' own indexes for the result)."""
    column = getattr(UserAlias, wanted)
    return (
        select(column)
        .where(
            getattr(UserAlias, known) == bindparam(key),
            UserAlias.waba_id == bindparam("waba_id"),
        )
        .order_by(UserAlias.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _on_number(column: Any, value: Any) -> Any:
    return select(Conversation.id).where(
        Conversation.phone_number_id == bindparam("phone_number_id"), column == value
    )


# FOR UPDATE (PostgreSQL; SQLite serializes writers anyway): a concurrent delivery for the same
# conversation waits here and then reads what the other committed. Without it, both decide
# from the same old row and the later commit overwrites a newer click or time. Built once: the
# hot path of webhook processing. Ids Meta changed are found in the same statement: an earlier
# id leads to the user's current one, and a current id to a conversation still under the
# earlier one (an identity change that came before any message of the user). One indexed
# lookup per branch: with the alias terms OR-ed in one WHERE, SQLite without statistics
# scanned every conversation of the number instead.
_FIND = (
    select(Conversation)
    .where(
        Conversation.id.in_(
            union_all(
                _on_number(Conversation.user_id, bindparam("user_id")),
                _on_number(Conversation.wa_id, bindparam("wa_id")),
                _on_number(Conversation.user_id, _alias("previous", "current", "user_id")),
                _on_number(Conversation.wa_id, _alias("previous", "current", "wa_id")),
                _on_number(Conversation.user_id, _alias("current", "previous", "user_id")),
                _on_number(Conversation.wa_id, _alias("current", "previous", "wa_id")),
            )
        )
    )
    .with_for_update()
)


def _find(
    session: Session, waba_id: str, phone_number_id: str, wa_id: str | None, user_id: str | None
) -> Conversation | None:
    """By user_id first (the stable id), else by wa_id, else by an earlier or later id of
    the user: one query for all."""
    if not (user_id or wa_id):
        return None
    found = session.scalars(
        _FIND,
        {
            "phone_number_id": phone_number_id,
            "user_id": user_id,
            "wa_id": wa_id,
            "waba_id": waba_id,
        },
    ).all()
    if user_id:
        for conversation in found:
            if conversation.user_id == user_id:
                return conversation
    for conversation in found:
        if wa_id and conversation.wa_id == wa_id:
            return conversation
    return found[0] if found else None


def _taken(session: Session, phone_number_id: str, column: Any, value: str) -> bool:
    return (
        session.scalar(
            select(Conversation.id).where(
                Conversation.phone_number_id == phone_number_id, column == value
            )
        )
        is not None
    )


def resolve_conversation(
    session: Session,
    *,
    waba_id: str,
    phone_number_id: str,
    display_phone_number: str | None,
    wa_id: str | None,
    user_id: str | None,
    profile_name: str | None = None,
    username: str | None = None,
    parent_user_id: str | None = None,
    first_state: dict[str, Any] | None = None,
) -> tuple[Conversation, bool]:
    """Get or create the conversation, and whether it was created here; fill in an
    identifier learnt later. A conversation created here starts with ``first_state`` (see
    ``first_message_state``)."""
    conversation = _find(session, waba_id, phone_number_id, wa_id, user_id)
    if conversation is None:
        values = {
            **(first_state or {}),
            "waba_id": waba_id,
            "phone_number_id": phone_number_id,
            "display_phone_number": display_phone_number,
            "wa_id": wa_id,
            "user_id": user_id,
            "profile_name": profile_name,
            "username": username,
            "parent_user_id": parent_user_id,
        }
        conversation = insert_object_or_ignore(session, Conversation, values)
        if conversation is not None:
            return conversation, True
        # Another delivery created it a moment ago (the insert waited for it).
        conversation = _find(session, waba_id, phone_number_id, wa_id, user_id)
        assert conversation is not None
        return conversation, False
    # Learn the missing identifier, unless another conversation already holds it (the user
    # wrote once with the number only and once with the BSUID only: both stay as they are).
    if (
        user_id
        and conversation.user_id is None
        and not _taken(session, phone_number_id, Conversation.user_id, user_id)
    ):
        conversation.user_id = user_id
    if (
        wa_id
        and conversation.wa_id is None
        and not _taken(session, phone_number_id, Conversation.wa_id, wa_id)
    ):
        conversation.wa_id = wa_id
    # Found under an earlier id of the user (the change came before their first message):
    # the conversation takes the id Meta uses now. Rare, so the alias is looked up only here.
    for kind, value in (("user_id", user_id), ("wa_id", wa_id)):
        held = getattr(conversation, kind)
        if value and held and held != value and identity.is_alias(session, waba_id, held, value):
            setattr(conversation, kind, value)
    if profile_name and conversation.profile_name != profile_name:
        conversation.profile_name = profile_name
    if parent_user_id and conversation.parent_user_id != parent_user_id:
        conversation.parent_user_id = parent_user_id
    if username and conversation.username != username:
        conversation.username = username
    if display_phone_number and conversation.display_phone_number is None:
        conversation.display_phone_number = display_phone_number
    return conversation, False


def record_activity(conversation: Conversation, at: datetime) -> None:
    # Meta does not promise order: keep the earliest and the latest seen, whatever came first.
    if conversation.first_message_at is None or at < conversation.first_message_at:
        conversation.first_message_at = at
    if conversation.last_message_at is None or at > conversation.last_message_at:
        conversation.last_message_at = at


def _ad(referral: dict[str, Any]) -> dict[str, Any]:
    ad = {key: referral.get(key) for key in AD_FIELDS}
    welcome = referral.get("welcome_message")
    ad["welcome_message"] = welcome.get("text") if isinstance(welcome, dict) else None
    return {
        k: (v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None)
        for k, v in ad.items()
    }


def click_id(referral: dict[str, Any] | None) -> str | None:
    """The referral's ctwa_clid, if it has a usable one."""
    if referral is None:
        return None
    clid = referral.get("ctwa_clid")
    if not isinstance(clid, str) or len(clid) > CLICK_ID:
        return None  # not a click id Meta issued, and no column could hold it
    return clid or None


def first_message_state(at: datetime, referral: dict[str, Any] | None) -> dict[str, Any]:
    """A new conversation's columns as its first message leaves them, so that they go into
    its INSERT: ``record_activity`` and ``record_click`` then change nothing, and no UPDATE
    follows (one statement fewer for a CTWA delivery from a new user, the usual one)."""
    state: dict[str, Any] = {"first_message_at": at, "last_message_at": at}
    if referral is not None:
        state.update(referral=_ad(referral), clicked_at=at, ctwa_clid=click_id(referral))
    return state


def _click_column(key: str, value: Any) -> str | None:
    """An ad field as its ``clicks`` column takes it: text, cut to the column's size."""
    if value is None:
        return None
    text = str(value)
    length = getattr(Click.__table__.c[key].type, "length", None)
    return text[:length] if length else text


def click_row(
    conversation_id: int, wamid: str, referral: dict[str, Any], at: datetime
) -> dict[str, Any]:
    """The ``clicks`` row of a referral (see ``record_click``)."""
    return {
        "conversation_id": conversation_id,
        "message_wamid": wamid,
        "ctwa_clid": click_id(referral),
        **{k: _click_column(k, v) for k, v in _ad(referral).items()},
        "referral": referral,
        "clicked_at": at,
    }


def record_click(
    session: Session,
    conversation: Conversation,
    wamid: str,
    referral: dict[str, Any],
    at: datetime,
) -> None:
    """Keep the referral in the history; make it the conversation's click if it is the latest.

    A referral without ``ctwa_clid`` (ads shown in WhatsApp Status) is kept in the history but
    never erases a click the conversation already has.
    """
    ad = _ad(referral)
    clid = click_id(referral)
    row_id = insert_or_ignore(session, Click, click_row(conversation.id, wamid, referral, at))
    if row_id is None:
        return
    if clid:
        if (
            conversation.clicked_at is None
            or conversation.ctwa_clid is None
            or at >= conversation.clicked_at
        ):
            conversation.ctwa_clid = clid
            conversation.referral = ad
            conversation.clicked_at = at
    elif conversation.ctwa_clid is None and (
        conversation.clicked_at is None or at >= conversation.clicked_at
    ):
        # The ad and its time describe the same referral: the latest one.
        conversation.referral = ad
        conversation.clicked_at = at


def click_at(session: Session, conversation: Conversation, at: datetime) -> str | None:
    """The ad click in effect when the customer acted at ``at``: the conversation's click,
    unless that came later (Meta does not promise order: a message can be processed after a
    newer click), then the latest earlier click of its history; None before any click."""
    if conversation.ctwa_clid is None:
        return None  # no click id was ever seen (record_click sets the first one)
    if conversation.clicked_at is None or conversation.clicked_at <= at:
        return conversation.ctwa_clid
    earlier: str | None = session.scalar(
        select(Click.ctwa_clid)
        .where(
            Click.conversation_id == conversation.id,
            Click.ctwa_clid.is_not(None),
            Click.clicked_at <= at,
        )
        .order_by(Click.clicked_at.desc(), Click.id.desc())
        .limit(1)
    )
    return earlier


def messages_without_a_click(
    session: Session, conversation: Conversation, clicked_at: datetime, wamid: str
) -> list[Message]:
    """The conversation's messages written at or after ``clicked_at`` (the click of message
    ``wamid``, just recorded) that were processed with no click id in effect for their time:
    those before the earliest other click. Meta does not promise order, so a follow-up can
    be processed before the click message; rules are fired for them once the click arrives.
    Messages that saw another click keep what they fired (a message is credited once)."""
    earliest = session.scalar(
        select(func.min(Click.clicked_at)).where(
            Click.conversation_id == conversation.id,
            Click.ctwa_clid.is_not(None),
            Click.message_wamid != wamid,
        )
    )
    query = select(Message).where(
        Message.conversation_id == conversation.id,
        Message.timestamp >= clicked_at,
        Message.wamid != wamid,
        Message.origin.is_(None),  # groups and the business's own messages fire nothing
    )
    if earliest is not None:
        if earliest <= clicked_at:
            return []  # an earlier click covered them all
        query = query.where(Message.timestamp < earliest)
    return list(session.scalars(query.order_by(Message.timestamp, Message.id)))


def conversation_for_click(session: Session, clid: str | None, wamid: str) -> Conversation | None:
    """The conversation an automatic event speaks of: by its click, else by its message."""
    if clid:
        found = session.scalar(
            select(Conversation)
            .join(Click, Click.conversation_id == Conversation.id)
            .where(Click.ctwa_clid == clid)
            .limit(1)
        )
        if found is not None:
            return found
        found = session.scalar(select(Conversation).where(Conversation.ctwa_clid == clid).limit(1))
        if found is not None:
            return found
    return session.scalar(
        select(Conversation)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(Message.wamid == wamid)
    )


def is_user(user: str, field: str | None = None) -> Any:
    """The conversations of ``user``, by wa_id or business-scoped user_id (``field`` names
    one of them, else either), the current one or any the user had before."""
    earlier = identity.current_of(user)
    by_wa_id = (Conversation.wa_id == user) | Conversation.wa_id.in_(earlier)
    by_user_id = (Conversation.user_id == user) | Conversation.user_id.in_(earlier)
    if field == "wa_id":
        return by_wa_id
    if field == "user_id":
        return by_user_id
    return by_wa_id | by_user_id


def find_conversation(
    session: Session, user: str, phone_number_id: str | None = None, *, field: str | None = None
) -> Conversation | None:
    """By wa_id or business-scoped user_id (``field`` names one of them, else either);
    without a phone number, the user's most recently active conversation."""
    query = select(Conversation).where(is_user(user, field))
    if phone_number_id:
        query = query.where(Conversation.phone_number_id == phone_number_id)
    query = query.order_by(
        Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc()
    ).limit(1)
    return session.scalar(query)


def conversation_to_dict(session: Session, conversation: Conversation) -> dict[str, Any]:
    referral = conversation.referral
    return {
        "wa_id": conversation.wa_id,
        "user_id": conversation.user_id,
        "parent_user_id": conversation.parent_user_id,
        "previous_ids": identity.previous_ids(session, conversation),
        "waba_id": conversation.waba_id,
        "phone_number_id": conversation.phone_number_id,
        "display_phone_number": conversation.display_phone_number,
        "profile_name": conversation.profile_name,
        "username": conversation.username,
        "ctwa_clid": conversation.ctwa_clid,
        "referral": dict(referral) if referral else None,
        "clicked_at": isoformat(conversation.clicked_at),
        "first_message_at": isoformat(conversation.first_message_at),
        "last_message_at": isoformat(conversation.last_message_at),
    }


def clicks_of(session: Session, conversation: Conversation) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Click).where(Click.conversation_id == conversation.id).order_by(Click.clicked_at)
    )
    return [
        {
            "ctwa_clid": c.ctwa_clid,
            "source_id": c.source_id,
            "source_type": c.source_type,
            "source_url": c.source_url,
            "headline": c.headline,
            "clicked_at": isoformat(c.clicked_at),
            "message_id": c.message_wamid,
        }
        for c in rows
    ]
