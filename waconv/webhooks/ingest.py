"""Store a delivery, then act on it, in the request.

One transaction: the raw body is inserted (a redelivery of the same bytes is a no-op), then the
payload is processed inside a savepoint. If processing fails, the savepoint is rolled back, the
delivery stays stored with ``status = failed`` and the error, and Meta still gets its 200
(a non-200 would make Meta redeliver for 7 days to every subscribed app). ``waconv webhooks
replay`` processes failed deliveries again once the cause is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.db import insert_or_ignore
from waconv.models import WebhookDelivery
from waconv.services import Services
from waconv.webhooks.processing import process_payload

log = logging.getLogger(__name__)

# Stored with the delivery: enough to tell an operator what broke without a traceback.
MAX_ERROR_LENGTH = 2000
# Two deliveries touching the same conversations in opposite order deadlock on PostgreSQL; one
# is chosen as the victim. Its savepoint is retried a few times before the delivery is failed.
MAX_PROCESS_ATTEMPTS = 4
LOCK_CONFLICTS = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


@dataclass(frozen=True)
class ReceiveResult:
    outcome: str  # stored | duplicate | processing_failed
    delivery_id: int | None


def receive(services: Services, raw: bytes, payload: dict[str, Any]) -> ReceiveResult:
    digest = hashlib.sha256(raw).hexdigest()
    with services.db.transaction() as session:
        delivery_id = insert_or_ignore(
            session,
            WebhookDelivery,
            {"body_sha256": digest, "body": raw, "status": WebhookDelivery.PROCESSED},
        )
        if delivery_id is None:
            existing = session.scalar(
                select(WebhookDelivery.id).where(WebhookDelivery.body_sha256 == digest)
            )
            log.info("webhook.delivery.duplicate delivery_id=%s", existing)
            return ReceiveResult("duplicate", existing)
        ok = _process(services, session, delivery_id, payload)
    return ReceiveResult("stored" if ok else "processing_failed", delivery_id)


def _is_lock_conflict(exc: Exception) -> bool:
    """PostgreSQL chose this transaction as a deadlock victim (or a serialization loser)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in LOCK_CONFLICTS


def _process(
    services: Services, session: Session, delivery_id: int, payload: dict[str, Any]
) -> bool:
    """Process inside a savepoint; record the outcome on the delivery row. True when it worked."""
    attempt = 1
    while True:
        try:
            with session.begin_nested():
                items = process_payload(session, services, delivery_id, payload)
            break
        except Exception as exc:
            if attempt < MAX_PROCESS_ATTEMPTS and _is_lock_conflict(exc):
                # Rolling back the savepoint released its locks; the other delivery goes on,
                # and the retry sees what it committed (its messages are then no-ops here).
                log.info(
                    "webhook.delivery.lock_conflict delivery_id=%s attempt=%s",
                    delivery_id,
                    attempt,
                )
                attempt += 1
                continue
            return _record_failure(session, delivery_id, exc)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status=WebhookDelivery.PROCESSED, error=None, processed_at=utcnow(), items=items)
    )
    return True


def _record_failure(session: Session, delivery_id: int, exc: Exception) -> bool:
    log.error("webhook.delivery.processing_failed delivery_id=%s", delivery_id, exc_info=exc)
    # NUL: PostgreSQL text refuses it, and an exception may quote what the payload held.
    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH].replace("\x00", "\\x00")
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status=WebhookDelivery.FAILED, error=error, processed_at=utcnow())
    )
    return False


@dataclass(frozen=True)
class ReplayResult:
    delivery_id: int
    ok: bool
    error: str | None


def replay(
    services: Services, *, ids: Sequence[int] = (), all_failed: bool = False
) -> list[ReplayResult]:
    """Process stored deliveries again. Items already recorded are skipped (their keys exist)."""
    with services.db.transaction() as session:
        query = select(WebhookDelivery.id).order_by(WebhookDelivery.id)
        if ids:
            query = query.where(WebhookDelivery.id.in_(ids))
        elif all_failed:
            query = query.where(WebhookDelivery.status == WebhookDelivery.FAILED)
        else:
            return []
        targets = list(session.scalars(query))
    results = []
    for delivery_id in targets:
        with services.db.transaction() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None or delivery.body is None:
                results.append(ReplayResult(delivery_id, False, "body pruned; cannot replay"))
                continue
            delivery.attempts += 1
            payload = json.loads(delivery.body)
            ok = _process(services, session, delivery_id, payload)
            session.flush()
            session.refresh(delivery)
            results.append(ReplayResult(delivery_id, ok, delivery.error))
    return results
