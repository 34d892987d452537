"""Store a delivery, and act on it: in the request ("inline") or just after ("background").

Storing is one short insert of the raw body (a redelivery of the same bytes is a no-op); then
Meta gets its 200. Processing applies the payload inside a savepoint, in the same transaction
that marks the delivery processed, so a crash leaves it ``received`` and it is processed again.
If processing fails, the savepoint is rolled back and the delivery stays stored with
``status = failed`` and the error (never a non-200: Meta would redeliver for 7 days to every
subscribed app). ``waconv webhooks replay`` processes failed deliveries again.

In background mode a thread of each app process (``waconv.webhooks.processor``) picks stored
deliveries up within a moment; the request itself does only the insert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.conversations.store import ENSURED_ACCOUNTS
from waconv.db import Database, insert_or_ignore, oldest_received, time_binder
from waconv.models import WebhookDelivery
from waconv.services import Services
from waconv.webhooks.batch import apply_batch
from waconv.webhooks.processing import needs_scrub, process_payload, scrub

log = logging.getLogger(__name__)

# Stored with the delivery: enough to tell an operator what broke without a traceback.
MAX_ERROR_LENGTH = 2000
# Two deliveries touching the same conversations in opposite order deadlock on PostgreSQL; one
# is chosen as the victim. Its savepoint is retried a few times before the delivery is failed.
MAX_PROCESS_ATTEMPTS = 4
LOCK_CONFLICTS = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def _refuse_constant(name: str) -> None:
    # NaN / Infinity are not JSON (RFC 8259); Python accepts them, PostgreSQL's jsonb does not.
    raise ValueError(f"{name} is not JSON")


def _float_or_text(text: str) -> float | str:
    # 1e400 parses to inf, which no database can keep in a JSON column: such a number stays
    # the text it was written as, and whatever reads it refuses that one field, not the delivery.
    value = float(text)
    return value if math.isfinite(value) else text


def _int_or_text(text: str) -> int | str:
    # Past 4,300 digits int() refuses (CVE-2020-10735): kept as text, like a float too large.
    try:
        return int(text)
    except ValueError:
        return text


def parse_body(raw: bytes) -> Any:
    """Strict JSON: raises ValueError (or RecursionError for absurd nesting).

    UTF-8 only, as RFC 8259 requires between systems (a leading BOM is allowed): given bytes,
    ``json.loads`` would also read UTF-16 and UTF-32."""
    text = raw.decode("utf-8-sig")  # UnicodeDecodeError is a ValueError
    return json.loads(
        text, parse_constant=_refuse_constant, parse_float=_float_or_text, parse_int=_int_or_text
    )


OUTCOMES = ("stored", "duplicate", "processing_failed")


@dataclass(frozen=True)
class ReceiveResult:
    outcome: str  # one of OUTCOMES
    delivery_id: int | None


# The store's two statements in the drivers' own SQL (see ``Database.autocommit_cursor``), by
# dialect. Every column the model fills by default is given: a row stored this way reads back
# exactly like one written through the ORM. PostgreSQL stores a group at a time
# (``_StoreGroup``): its rows given as two arrays, one statement for the group (psycopg's
# executemany would send one per row).
_STORE_SQL = {
    "sqlite": (
        "INSERT INTO webhook_deliveries (body_sha256, body, received_at, status, attempts, items)"
        " VALUES (?, ?, ?, 'received', 1, 0) ON CONFLICT DO NOTHING RETURNING id",
        "SELECT id FROM webhook_deliveries WHERE body_sha256 = ?",
    ),
    "postgresql": (
        "INSERT INTO webhook_deliveries (body_sha256, body, received_at, status, attempts, items)"
        " SELECT digest, body, %s, 'received', 1, 0"
        " FROM unnest(CAST(%s AS text[]), CAST(%s AS bytea[])) AS given(digest, body)"
        " ON CONFLICT DO NOTHING RETURNING id, body_sha256",
        "SELECT body_sha256, id FROM webhook_deliveries"
        " WHERE body_sha256 = ANY(CAST(%s AS text[]))",
    ),
}


def receive(services: Services, raw: bytes, payload: dict[str, Any]) -> ReceiveResult:
    if services.settings.webhook_processing == "inline":
        return _receive_inline(services, raw, payload)
    return store(services, raw)


def store(services: Services, raw: bytes) -> ReceiveResult:
    """The request's whole database work in background mode: one insert, committed alone on
    SQLite, with the other stores of the moment on PostgreSQL (``_StoreGroup``)."""
    digest = hashlib.sha256(raw).hexdigest()
    db = services.db
    if db.dialect == "postgresql":
        return _store_group(db).store(db, digest, raw)
    insert, existing = _STORE_SQL["sqlite"]
    received_at = time_binder(db.engine.dialect)(utcnow())
    with db.autocommit_cursor() as cursor:
        cursor.execute(insert, (digest, raw, received_at))
        row = cursor.fetchone()
        if row is None:
            cursor.execute(existing, (digest,))
            found = cursor.fetchone()
            delivery_id = found[0] if found else None
            log.info("webhook.delivery.duplicate delivery_id=%s", delivery_id)
            return ReceiveResult("duplicate", delivery_id)
    return ReceiveResult("stored", row[0])


# --- PostgreSQL: stores committed together ---------------------------------------------------
#
# Each commit waits for PostgreSQL to flush its WAL. Sixteen requests committing one row each
# queued on the WAL's lock: sampled during a burst of 20,000, 2,077 of 2,371 active backends
# were waiting on WALWrite or WALSync, and the requests' latency (8 ms at p50), not the CPU
# (1.3-1.5 of 2 cores busy), bounded the rate. So a store that arrives while none is being
# written writes every store waiting in its process, itself included, in one INSERT and one
# commit; those that arrive meanwhile wait, and the first of them writes the next group. Each
# request is still answered only once its own row is committed.


class _Store:
    """One request's store, waiting in a group."""

    __slots__ = ("digest", "error", "raw", "result")

    def __init__(self, digest: str, raw: bytes) -> None:
        self.digest = digest
        self.raw = raw
        self.result: ReceiveResult | None = None
        self.error: BaseException | None = None


class _StoreGroup:
    """The stores of one process and database, written a group at a time."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: list[_Store] = []
        self._writing = False

    def store(self, db: Database, digest: str, raw: bytes) -> ReceiveResult:
        mine = _Store(digest, raw)
        with self._changed:
            self._waiting.append(mine)
            while self._writing and mine.result is None and mine.error is None:
                self._changed.wait()
            if mine.result is None and mine.error is None:  # none being written: write them
                self._writing = True
                group, self._waiting = self._waiting, []
            else:
                group = []
        if group:
            try:
                _write_group(db, group)
            except BaseException as exc:  # each request of the group answers it (a 503)
                for waiting in group:
                    waiting.error = exc
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result


def _write_group(db: Database, group: list[_Store]) -> None:
    """Insert the group's rows in one statement, and set each store's result: ``stored``
    for the first of each body not stored before, ``duplicate`` (with the stored id) for the
    rest."""
    insert, earlier = _STORE_SQL["postgresql"]
    digests = [s.digest for s in group]
    with db.autocommit_cursor() as cursor:
        cursor.execute(insert, (utcnow(), digests, [s.raw for s in group]))
        inserted = {digest: delivery_id for delivery_id, digest in cursor.fetchall()}
        existing: dict[str, int] = {}
        if len(inserted) < len(group):
            cursor.execute(earlier, ([d for d in digests if d not in inserted],))
            existing = dict(cursor.fetchall())
    for s in group:
        delivery_id = inserted.pop(s.digest, None)
        if delivery_id is not None:
            s.result = ReceiveResult("stored", delivery_id)
            existing[s.digest] = delivery_id  # the same body again in this group
        else:
            found = existing.get(s.digest)
            log.info("webhook.delivery.duplicate delivery_id=%s", found)
            s.result = ReceiveResult("duplicate", found)


_GROUPS: weakref.WeakKeyDictionary[Database, _StoreGroup] = weakref.WeakKeyDictionary()
_GROUPS_LOCK = threading.Lock()


def _store_group(db: Database) -> _StoreGroup:
    group = _GROUPS.get(db)
    if group is None:
        with _GROUPS_LOCK:
            group = _GROUPS.setdefault(db, _StoreGroup())
    return group


def _receive_inline(services: Services, raw: bytes, payload: dict[str, Any]) -> ReceiveResult:
    digest = hashlib.sha256(raw).hexdigest()
    with services.db.transaction() as session:
        delivery_id = insert_or_ignore(
            session,
            WebhookDelivery,
            {"body_sha256": digest, "body": raw, "status": WebhookDelivery.RECEIVED},
        )
        if delivery_id is None:
            existing = session.scalar(
                select(WebhookDelivery.id).where(WebhookDelivery.body_sha256 == digest)
            )
            log.info("webhook.delivery.duplicate delivery_id=%s", existing)
            return ReceiveResult("duplicate", existing)
        ok = _process(services, session, delivery_id, payload)
    return ReceiveResult("stored" if ok else "processing_failed", delivery_id)


# One processing transaction stops taking new deliveries after this long. On SQLite it holds
# the write lock, and webhook requests wait behind it; on PostgreSQL nothing waits for it
# (the requests only insert), so it runs longer and spends less on each commit.
PROCESS_BUDGET_SECONDS: dict[str, float] = {"sqlite": 0.005, "postgresql": 0.05}
PROCESS_BATCH = 50
# While no request has come for a moment (``idle``), nothing waits for SQLite's lock either:
# bigger transactions spend less per delivery on the batch's statements and its commit.
IDLE_BUDGET_SECONDS: dict[str, float] = {"sqlite": 0.05, "postgresql": 0.3}
IDLE_BATCH = 500


class _Pace:
    """What applying one delivery took lately (set-based, per batch): a transaction takes
    no more deliveries than its budget allows at that pace."""

    WEIGHT = 0.2  # of the latest batch in the running mean
    # Until a batch has been timed: about what one delivery applied on its own costs, so
    # that a first transaction does not take its whole limit at once.
    FIRST_GUESS_SECONDS = 0.001

    def __init__(self, seconds: float = FIRST_GUESS_SECONDS) -> None:
        self.seconds = seconds

    def observe(self, seconds: float, deliveries: int) -> None:
        each = seconds / deliveries
        self.seconds += self.WEIGHT * (each - self.seconds)


_pace = _Pace()


def process_received(
    services: Services, *, budget_seconds: float | None = None, idle: bool = False
) -> int:
    """Process stored deliveries in one short transaction; return how many were processed.

    The deliveries of a transaction are first applied together, without a savepoint each (two
    statements fewer per delivery). If one of them fails, that transaction is rolled back and
    the same work is done again with each delivery in its own savepoint, so a failing delivery
    is recorded as failed and the others are processed. On PostgreSQL, ``SKIP LOCKED`` lets
    the processors of several hosts share the work; on SQLite, transactions are serialized.
    With nothing waiting, it only reads: no transaction, which on SQLite takes the write lock.
    """
    if oldest_waiting(services) is None:
        return 0
    budget = budget_seconds
    if budget is None:
        budget = (IDLE_BUDGET_SECONDS if idle else PROCESS_BUDGET_SECONDS)[services.db.dialect]
    limit = IDLE_BATCH if idle else PROCESS_BATCH
    try:
        return _process_batch(services, budget, limit, isolate=False)
    except Exception as exc:
        log.info("webhook.processing.retrying_one_by_one after %s", type(exc).__name__)
        return _process_batch(services, budget, limit, isolate=True)


def oldest_waiting(services: Services) -> datetime | None:
    """When the oldest delivery still waiting for processing was received (None: none)."""
    return oldest_received(services.db, WebhookDelivery, _WAITING)


_WAITING = WebhookDelivery.status == WebhookDelivery.RECEIVED


def _process_batch(services: Services, budget: float, limit: int, *, isolate: bool) -> int:
    started = time.monotonic()
    processed: list[tuple[int, int]] = []  # (delivery id, items)
    failed = 0
    with services.db.transaction() as session:
        query = (
            select(WebhookDelivery.id, WebhookDelivery.body)
            .where(WebhookDelivery.status == WebhookDelivery.RECEIVED)
            .order_by(WebhookDelivery.id)
            .limit(limit)
        )
        if services.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        parsed: list[tuple[int, dict[str, Any]]] = []
        for delivery_id, body in session.execute(query).all():
            taken = len(parsed) + failed
            if taken and time.monotonic() - started + taken * _pace.seconds > budget:
                break
            payload = _payload_or_failure(session, delivery_id, body)
            if payload is None:
                failed += 1
            elif not isolate:
                if needs_scrub(body or b""):
                    payload = scrub(payload)
                parsed.append((delivery_id, payload))
            else:
                items = _apply_isolated(
                    services, session, delivery_id, payload, defer_conflicts=True
                )
                if items is None:
                    failed += 1
                elif items != DEFERRED:
                    processed.append((delivery_id, items))
        if parsed:
            applying = time.monotonic()
            processed += apply_batch(session, services, parsed, process_payload)
            _pace.observe(time.monotonic() - applying, len(parsed))
        _mark_processed(session, processed)
        ensured = session.info.get(ENSURED_ACCOUNTS, set())
    services.known_accounts.update(ensured)  # committed: they exist for good
    return len(processed) + failed


def _payload_or_failure(session: Session, delivery_id: int, body: bytes | None) -> Any:
    """The stored body parsed, or None once the delivery is recorded as failed."""
    try:
        payload = parse_body(body or b"")
    except (ValueError, RecursionError) as exc:
        _record_failure(session, delivery_id, exc)
        return None
    if not isinstance(payload, dict):
        _record_failure(session, delivery_id, ValueError("body is not a JSON object"))
        return None
    return payload


def _mark_processed(session: Session, processed: Sequence[tuple[int, int]]) -> None:
    if not processed:
        return
    now = utcnow()
    by_items: dict[int, list[int]] = {}  # one UPDATE per item count: mostly one in all
    for delivery_id, items in processed:
        by_items.setdefault(items, []).append(delivery_id)
    connection = session.connection()
    for items, ids in by_items.items():
        connection.execute(_MARK_PROCESSED, {"ids": ids, "items": items, "processed_at": now})


_MARK_PROCESSED = (
    update(WebhookDelivery)
    .where(WebhookDelivery.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=WebhookDelivery.PROCESSED,
        error=None,
        processed_at=bindparam("processed_at"),
        items=bindparam("items"),
    )
)


def _process_stored(
    services: Services, session: Session, delivery_id: int, body: bytes | None
) -> bool:
    payload = _payload_or_failure(session, delivery_id, body)
    return payload is not None and _process(services, session, delivery_id, payload)


def _is_lock_conflict(exc: Exception) -> bool:
    """PostgreSQL chose this transaction as a deadlock victim (or a serialization loser)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in LOCK_CONFLICTS


# What _apply_isolated answers for a delivery left for a later transaction.
DEFERRED = -1


def _apply_isolated(
    services: Services,
    session: Session,
    delivery_id: int,
    payload: dict[str, Any],
    *,
    defer_conflicts: bool = False,
) -> int | None:
    """Process inside a savepoint: the items looked at, or None once recorded as failed.

    A lock conflict (PostgreSQL chose us as a deadlock victim) is retried at once, unless
    ``defer_conflicts``: in a batch, the transaction still holds the locks of the deliveries
    before this one, so the same two processors would deadlock again (seen: four attempts
    lost, and a sound delivery recorded as failed). The delivery is then left ``received``
    (``DEFERRED``) for a later transaction, once the other one has committed.
    """
    attempt = 1
    ensured = set(session.info.get(ENSURED_ACCOUNTS, ()))
    while True:
        try:
            with session.begin_nested():
                return process_payload(session, services, delivery_id, payload)
        except Exception as exc:
            session.info[ENSURED_ACCOUNTS] = ensured  # its inserts were rolled back
            if defer_conflicts and _is_lock_conflict(exc):
                log.info("webhook.delivery.lock_conflict delivery_id=%s deferred", delivery_id)
                return DEFERRED
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
            _record_failure(session, delivery_id, exc)
            return None


def _process(
    services: Services, session: Session, delivery_id: int, payload: dict[str, Any]
) -> bool:
    """Process inside a savepoint; record the outcome on the delivery row. True when it worked."""
    items = _apply_isolated(services, session, delivery_id, payload)
    if items is not None:
        _mark_processed(session, [(delivery_id, items)])
    return items is not None


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
            ok = _process_stored(services, session, delivery_id, delivery.body)
            session.flush()
            session.refresh(delivery)
            results.append(ReplayResult(delivery_id, ok, delivery.error))
    return results
