"""``waconv prune``: forget raw payloads and message texts past the retention age.

Kept: the delivery rows (their body hash keeps redeliveries harmless), message rows (their
wamid does the same) with type and time, clicks, conversations and every conversion: what
attribution and audits need. Removed: raw bodies, message texts and payloads, and status and
notice rows, which carry phone numbers and message content, and the request log (requests
to Meta and their links to conversions), which only audits need. Deliveries whose processing
failed keep their body until replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Executable, Select, delete, null, select, update

from waconv.clock import utcnow
from waconv.models import (
    DispatchRequest,
    DispatchRequestConversion,
    Message,
    MessageStatus,
    WebhookDelivery,
    WebhookNotice,
)
from waconv.services import Services

log = logging.getLogger(__name__)

# Rows changed per transaction: keeps locks short on a busy production database.
CHUNK = 5000
# Requests per transaction: each carries up to 1,000 events, i.e. up to 1,000 link rows.
REQUEST_CHUNK = 50


@dataclass
class PruneStats:
    deliveries: int = 0
    messages: int = 0
    statuses: int = 0
    notices: int = 0
    requests: int = 0


def prune(services: Services, *, days: int) -> PruneStats:
    if days < 1:
        raise ValueError("retention must be at least 1 day")
    cutoff = utcnow() - timedelta(days=days)
    stats = PruneStats()
    db = services.db

    def chunked(
        id_query: Select[Any],
        apply: Callable[[list[int]], Any],
        chunk: int = CHUNK,
    ) -> int:
        # One pass in id order (keyset): it ends even if a change left a row still matching.
        # ``apply`` gives a statement, or several to run in order in the same transaction.
        total, last = 0, 0
        id_column = id_query.selected_columns[0]
        while True:
            with db.transaction() as session:
                ids = list(
                    session.scalars(
                        id_query.where(id_column > last).order_by(id_column).limit(chunk)
                    )
                )
                if not ids:
                    return total
                statements = apply(ids)
                if not isinstance(statements, Sequence):
                    statements = [statements]
                for statement in statements:
                    session.execute(statement.execution_options(synchronize_session=False))
                total += len(ids)
                last = ids[-1]

    stats.deliveries = chunked(
        select(WebhookDelivery.id).where(
            WebhookDelivery.received_at < cutoff,
            WebhookDelivery.body.is_not(None),
            WebhookDelivery.status != WebhookDelivery.FAILED,
        ),
        lambda ids: (
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(body=None, pruned_at=utcnow())
        ),
    )
    stats.messages = chunked(
        select(Message.id).where(
            Message.created_at < cutoff,
            (Message.text.is_not(None)) | (Message.payload.is_not(None)),
        ),
        # null(): a plain None would be stored as the JSON value null, which IS NOT NULL.
        lambda ids: update(Message).where(Message.id.in_(ids)).values(text=None, payload=null()),
    )
    stats.statuses = chunked(
        select(MessageStatus.id).where(MessageStatus.created_at < cutoff),
        lambda ids: delete(MessageStatus).where(MessageStatus.id.in_(ids)),
    )
    stats.notices = chunked(
        select(WebhookNotice.id).where(WebhookNotice.created_at < cutoff),
        lambda ids: delete(WebhookNotice).where(WebhookNotice.id.in_(ids)),
    )
    stats.requests = chunked(
        select(DispatchRequest.id).where(DispatchRequest.at < cutoff),
        _delete_requests,
        REQUEST_CHUNK,
    )
    log.info(
        "retention.pruned days=%s deliveries=%s messages=%s statuses=%s notices=%s requests=%s",
        days,
        stats.deliveries,
        stats.messages,
        stats.statuses,
        stats.notices,
        stats.requests,
    )
    return stats


def _delete_requests(ids: list[int]) -> list[Executable]:
    """The requests and their links (first: they point at the requests)."""
    return [
        delete(DispatchRequestConversion).where(DispatchRequestConversion.request_id.in_(ids)),
        delete(DispatchRequest).where(DispatchRequest.id.in_(ids)),
    ]
