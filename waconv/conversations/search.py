"""Find a user's conversations by any id they have had, or by name (the console's search)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import and_, or_, select, union
from sqlalchemy.orm import Session

from waconv.models import Conversation, UserAlias

# One screen of results; a name that matches more is too short to be useful.
SEARCH_LIMIT = 50
MAX_QUERY = 255
# "+1 (650) 555-0100" is how people write the number Meta calls wa_id 16505550100.
_PHONE = re.compile(r"^\+?[\d\s().-]{6,}$")


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(session: Session, text: str, limit: int = SEARCH_LIMIT) -> Sequence[Conversation]:
    """Conversations whose user has or had ``text`` as wa_id, user_id or parent_user_id (an
    earlier id leads to the user's conversation through ``user_aliases``), or whose profile
    name or username contains it; the most recently active first."""
    text = text.strip()[:MAX_QUERY]
    if not text:
        return []
    ids = {text}
    if _PHONE.match(text):
        ids.add(re.sub(r"\D", "", text))
    # Ids the user has now for an earlier id, and earlier ids for a current one: a
    # conversation may still hold either (an id change can come before any message).
    linked = select(UserAlias.waba_id, UserAlias.current.label("id")).where(
        UserAlias.previous.in_(ids)
    )
    linked_back = select(UserAlias.waba_id, UserAlias.previous.label("id")).where(
        UserAlias.current.in_(ids)
    )
    aliases = session.execute(union(linked, linked_back)).all()
    by_id = [
        Conversation.wa_id.in_(ids),
        Conversation.user_id.in_(ids),
        Conversation.parent_user_id.in_(ids),
        *(
            and_(Conversation.waba_id == waba_id, column == alias)
            for waba_id, alias in aliases
            for column in (Conversation.wa_id, Conversation.user_id)
        ),
    ]
    like = f"%{_escaped(text)}%"
    by_name = [
        Conversation.profile_name.ilike(like, escape="\\"),
        Conversation.username.ilike(like, escape="\\"),
    ]
    # One indexed query per id column, then the names: an OR of all in one WHERE would read
    # every conversation for the ids too.
    matched = union(
        *(select(Conversation.id).where(term) for term in by_id),
        select(Conversation.id).where(or_(*by_name)),
    ).subquery()
    return session.scalars(
        select(Conversation)
        .where(Conversation.id.in_(select(matched.c.id)))
        .order_by(Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc())
        .limit(limit)
    ).all()
