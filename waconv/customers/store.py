"""Hashed customer information per conversation, and what ``user_data`` carries from it.

Only SHA-256 digests are written here (waconv.customers.normalize makes them); the plain
values a connector received are gone when its request ends.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.customers.normalize import FIELDS, sha256_hex
from waconv.models import Conversation, CustomerIdentifier

# Session.info key: set (by Services.build) when WACONV_SEND_CUSTOMER_INFO is true, read where a
# conversion is enqueued, so the rules, the admin API and the connectors all follow it.
SEND_CUSTOMER_INFO = "waconv.send_customer_info"
# A customer named with many emails over time: Meta takes a list, but a long one is noise.
MAX_VALUES_PER_FIELD = 5


def remember(session: Session, conversation_id: int, hashed: Iterable[tuple[str, str]]) -> None:
    """Keep these ``(field, digest)`` pairs for the conversation (each once), in one
    statement."""
    now = utcnow()
    rows = [
        {"conversation_id": conversation_id, "field": f, "value_sha256": d, "created_at": now}
        for f, d in dict.fromkeys(hashed)
    ]
    if rows:
        connection = session.connection()
        connection.execute(_insert_ignore(connection.dialect.name), rows)


@functools.cache
def _insert_ignore(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(CustomerIdentifier).on_conflict_do_nothing()


def conversations_with(session: Session, field: str, digest: str) -> list[Conversation]:
    """Conversations with a click that this digest names, most recently active first."""
    return list(
        session.scalars(
            select(Conversation)
            .join(CustomerIdentifier, CustomerIdentifier.conversation_id == Conversation.id)
            .where(
                CustomerIdentifier.field == field,
                CustomerIdentifier.value_sha256 == digest,
                Conversation.ctwa_clid.is_not(None),
            )
            .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
        )
    )


def user_data_for(session: Session, conversation_id: int) -> dict[str, Any]:
    """The hashed ``user_data`` fields of a conversation: ``ph`` from its ``wa_id``, and what
    connectors named. One digest stays a string; several become a list (Meta takes both)."""
    found: dict[str, list[str]] = {}
    # Loaded already where a conversion is marked or fired: the session has it, no SELECT.
    conversation = session.get(Conversation, conversation_id)
    wa_id = conversation.wa_id if conversation is not None else None
    if wa_id:
        found["ph"] = [sha256_hex(wa_id)]  # already digits with the country code
    rows = session.execute(
        select(CustomerIdentifier.field, CustomerIdentifier.value_sha256)
        .where(CustomerIdentifier.conversation_id == conversation_id)
        .order_by(CustomerIdentifier.id)
    )
    for field, digest in rows:
        values = found.setdefault(field, [])
        if digest not in values and len(values) < MAX_VALUES_PER_FIELD:
            values.append(digest)
    user_data: dict[str, Any] = {}
    for field in FIELDS:
        digests = found.get(field)
        if digests:
            user_data[field] = digests[0] if len(digests) == 1 else digests
    return user_data


def with_customer_info(
    session: Session, conversation_id: int | None, extra: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``extra`` of a conversion to enqueue, with the hashed ``user_data`` when the session's
    owner sends customer information (see SEND_CUSTOMER_INFO)."""
    if conversation_id is None or not session.info.get(SEND_CUSTOMER_INFO):
        return extra
    user_data = user_data_for(session, conversation_id)
    if not user_data:
        return extra
    return {**(extra or {}), "user_data": user_data}
