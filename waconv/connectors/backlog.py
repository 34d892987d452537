"""Shopify order webhooks in a burst: answered once stored, applied when the burst is over.

Applying an order (matching its customer, keeping the digests, marking the conversion) costs
about 8 ms of CPU in a gunicorn worker, nearly all of it SQLAlchemy building and loading some
nine statements; under load each of them also waits for the GIL. Applied in their requests,
1,000 orders at 16 connections on two cores were answered with a p99 of 260-490 ms.

So an order is applied in its request only when the host is quiet (see ``turn``): the usual
case, and the answer says what became of it. Otherwise it is stored as a ``received``
receipt, its verified body encrypted under WACONV_SECRET_KEY, in one statement, and answered
``200 {"status": "received"}`` (the contract's "200 once stored, matched or not"). The
background processor applies the stored orders once requests stop arriving (or once the
oldest has waited ``MAX_RESTING_LAG``) and drops their bodies. Measured: p99 52-92 ms.

Orders are applied in the request, always, with ``WACONV_WEBHOOK_PROCESSING=inline`` (nothing
runs in the background) or without WACONV_SECRET_KEY (a body is never stored in plain text).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from waconv.accounts.crypto import TokenCipher
from waconv.clock import utcnow
from waconv.config import ConfigError, Settings
from waconv.connectors import service
from waconv.connectors.service import SHOPIFY, Receipt, ShopifyDelivery
from waconv.db import host_lock_path, oldest_received, time_binder
from waconv.models import ConnectorReceipt
from waconv.services import Services
from waconv.webhooks.ingest import IDLE_BUDGET_SECONDS, parse_body

log = logging.getLogger(__name__)

# Receipts the processor takes per transaction, at most (its time budget stops it sooner).
APPLY_BATCH = 50

# After an order was stored for the processor, the next ones are too for this long: a burst
# is under way, and one order applied in its request would hold up the others (see turn).
QUIET_SECONDS = 0.5

# Shopify requests in flight in this process.
_in_flight = 0
_in_flight_lock = threading.Lock()
_host_files: dict[tuple[int, str], IO[bytes]] = {}  # by process and database


def deferrable(settings: Settings) -> bool:
    return settings.webhook_processing == "background" and bool(settings.secret_key)


@contextlib.contextmanager
def turn(settings: Settings) -> Iterator[bool]:
    """True: apply the order in this request; False: store it for the processor.

    An order is applied in its request, as it always was, when the host is quiet: it is the
    only Shopify request of its process, no other process of the host is applying one (an
    flock), and none was stored for the processor in the last ``QUIET_SECONDS`` (that file's
    time stamp). In a burst, an order applied in its request took 100-800 ms and slowed the
    requests around it: its nine ORM statements each waited for the GIL behind them.
    """
    global _in_flight
    if not deferrable(settings):
        yield True
        return
    try:
        host = _host_file(settings.database_url)
    except OSError:  # no lock file (a temporary directory it cannot write): all inline
        log.warning("connector.shopify.no_lock_file; orders are applied in their requests")
        yield True
        return
    with _in_flight_lock:
        _in_flight += 1
        alone = _in_flight == 1
    try:
        if alone and time.time() - os.fstat(host.fileno()).st_mtime > QUIET_SECONDS:
            try:
                fcntl.flock(host, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                try:
                    yield True
                    return
                finally:
                    fcntl.flock(host, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.utime(host.fileno())
        yield False
    finally:
        with _in_flight_lock:
            _in_flight -= 1


def _host_file(database_url: str) -> IO[bytes]:
    """This process's own open file of the host's lock (one inherited across gunicorn's fork
    would share its flock with the other workers)."""
    key = (os.getpid(), database_url)
    found = _host_files.get(key)
    if found is None:
        path = host_lock_path(database_url, "shopify")
        new = not os.path.exists(path)
        found = _host_files[key] = open(path, "a+b")  # noqa: SIM115 (kept open: the lock)
        if new:
            os.utime(found.fileno(), (0, 0))  # no order was ever stored: the host is quiet
    return found


def store(services: Services, raw: bytes, delivery: ShopifyDelivery) -> Receipt:
    """Keep a verified delivery for the processor (wake it next), in one statement on the
    driver's cursor as the webhook's store does (the ORM's session cost more than the rest of
    the request); the same webhook id again is the earlier receipt (``duplicate``)."""
    db = services.db
    bind_time = time_binder(db.engine.dialect)
    triggered_at = delivery.triggered_at
    row = (
        SHOPIFY,
        delivery.webhook_id,
        delivery.topic[:64],
        ConnectorReceipt.RECEIVED,
        bind_time(utcnow()),
        TokenCipher(services.settings.secret_key).seal(raw),
        None if triggered_at is None else bind_time(triggered_at),
    )
    insert, earlier = (sql.replace("?", db.placeholder) for sql in _STORE_SQL)
    with db.autocommit_cursor() as cursor:
        cursor.execute(insert, row)
        stored = cursor.fetchone()
        if stored is not None:
            return Receipt(stored[0], ConnectorReceipt.RECEIVED)
        cursor.execute(earlier, (SHOPIFY, delivery.webhook_id))
        receipt_id, conversion_id = cursor.fetchone()
    return service.duplicate(SHOPIFY, Receipt(receipt_id, "duplicate", conversion_id))


_STORE_SQL = (
    "INSERT INTO connector_receipts"
    " (connector, webhook_id, topic, outcome, received_at, body, triggered_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
    "SELECT id, conversion_id FROM connector_receipts WHERE connector = ? AND webhook_id = ?",
)


def oldest_waiting(services: Services) -> datetime | None:
    """When the oldest stored delivery was received (None: none waits)."""
    return oldest_received(services.db, ConnectorReceipt, _WAITING)


_WAITING = ConnectorReceipt.outcome == ConnectorReceipt.RECEIVED


def apply_received(services: Services, *, busy: Callable[[], bool] | None = None) -> int:
    """Apply stored deliveries in one short transaction; return how many.

    It stops early once ``busy()`` says requests arrive: an order applied here holds SQLite's
    write lock, or on PostgreSQL the receipt's row, which a redelivery's insert waits for,
    and the processor runs at low priority, so under load it would hold them for as long as
    the requests keep the CPU. On PostgreSQL, ``SKIP LOCKED`` lets several processors share
    the deliveries.
    """
    if oldest_waiting(services) is None:
        return 0
    budget = IDLE_BUDGET_SECONDS[services.db.dialect]
    started = time.monotonic()
    query = (
        select(ConnectorReceipt).where(_WAITING).order_by(ConnectorReceipt.id).limit(APPLY_BATCH)
    )
    if services.db.dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    applied = 0
    with services.db.transaction() as session:
        for receipt in session.scalars(query).all():
            if applied and (time.monotonic() - started > budget or (busy and busy())):
                break
            _apply(services, session, receipt)
            applied += 1
    return applied


def _apply(services: Services, session: Session, receipt: ConnectorReceipt) -> None:
    settings = services.settings
    try:
        with session.begin_nested():
            raw = TokenCipher(settings.secret_key).unseal(receipt.body or b"")
            delivery = ShopifyDelivery(
                webhook_id=receipt.webhook_id,
                topic=receipt.topic or "",
                order=parse_body(raw),
                triggered_at=receipt.triggered_at,
            )
            values = service.apply_shopify(session, delivery, settings.default_phone_region)
    except (OperationalError, InterfaceError):
        raise  # the database is down or busy: the receipts stay received for the next pass
    except ConfigError as exc:
        values = {"outcome": ConnectorReceipt.REFUSED, "reason": f"{exc}; it was not applied"}
    except Exception as exc:
        # A fault of ours, not of the order: kept with the reason, and logged by the name of
        # the error only (its text could quote the order).
        log.error(
            "connector.shopify.apply_failed receipt=%s error=%s", receipt.id, type(exc).__name__
        )
        values = {
            "outcome": ConnectorReceipt.REFUSED,
            "reason": f"waconv failed to apply it ({type(exc).__name__}); see the log",
        }
    for column, value in {**values, "body": None, "triggered_at": None}.items():
        setattr(receipt, column, value)
    service.counted(SHOPIFY, receipt.id, {"topic": receipt.topic, **values})
