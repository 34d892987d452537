"""Database plumbing: SQLite's writers queue, the store's autocommit cursor."""

from __future__ import annotations

import fcntl
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Text, cast, func, literal, select

from tests import payloads as p
from tests.conftest import encode
from waconv.db import (
    SQLITE_AUTOCHECKPOINT_PAGES,
    UTCDateTime,
    from_driver_time,
    make_engine,
    time_binder,
)
from waconv.models import WebhookDelivery
from waconv.webhooks import ingest, processor


def _count(services) -> int:
    with services.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


def test_sqlite_writers_wait_their_turn_on_the_queue(services):
    db = services.db
    if db.dialect != "sqlite":
        assert db.writers is None  # PostgreSQL queues writers itself
        return
    body = encode(p.delivery(p.text("queued", wa_id="15550004444")))
    results = []
    with open(db.writers.path, "a+b") as other_process:  # its own open file: another writer
        fcntl.flock(other_process, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: results.append(ingest.store(services, body)))
        writer.start()
        writer.join(timeout=0.3)  # bounded wait for another thread, not a time rule
        assert writer.is_alive(), "the store did not wait for the writer ahead of it"
        fcntl.flock(other_process, fcntl.LOCK_UN)
    writer.join(timeout=10)
    assert [r.outcome for r in results] == ["stored"]
    assert _count(services) == 1


def test_a_failed_store_leaves_the_next_one_working(services, monkeypatch):
    body = encode(p.delivery(p.text("x", wa_id="15550003333")))
    broken = {
        style: (insert.replace("INSERT INTO", "INSERT INTOO"), lookup)
        for style, (insert, lookup) in ingest._STORE_SQL.items()
    }
    monkeypatch.setattr(ingest, "_STORE_SQL", broken)
    with pytest.raises(Exception, match=r"(?i)syntax"):
        ingest.store(services, body)
    monkeypatch.undo()
    assert ingest.store(services, body).outcome == "stored"  # autocommit again, nothing left open
    assert ingest.store(services, body).outcome == "duplicate"
    assert _count(services) == 1
    _a_transaction_still_rolls_back(services, rows=1)


def _a_transaction_still_rolls_back(services, *, rows: int) -> None:
    """The store's pooled connections go back to the pool out of autocommit: a transaction
    on them is still all or nothing."""
    with pytest.raises(RuntimeError), services.db.transaction() as session:
        session.add(WebhookDelivery(body_sha256="f" * 64, body=b"{}"))
        session.flush()
        raise RuntimeError("rolled back")
    assert _count(services) == rows


def test_sessions_after_stores_are_still_transactions(services):
    for i in range(3):  # every pooled connection the stores used
        ingest.store(services, encode(p.delivery(p.text(f"m{i}", wa_id=f"1555000{i:04d}"))))
    assert _count(services) == 3
    _a_transaction_still_rolls_back(services, rows=3)


@pytest.mark.postgres_only
def test_postgres_plans_each_query_for_its_parameters(services):
    """No statement keeps a plan made for other values, or for tables that have grown since.

    psycopg prepares a statement after its fifth run, and PostgreSQL may then keep one generic
    plan for it. Planned on an empty table, the conversation lookup searched by
    phone_number_id alone and filtered every conversation of that number for the user: the
    processor slowed down as conversations accumulated (290 -> 100 deliveries/s over 10,000).
    """
    with services.db.engine.connect() as c:
        for _ in range(10):  # twice psycopg's default threshold
            c.execute(select(func.count()).where(WebhookDelivery.status == "received"))
        kept = c.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    assert kept == []


@pytest.mark.parametrize(
    ("mode", "left_to_the_processor"), [("background", True), ("inline", False)]
)
def test_sqlite_commits_leave_wal_checkpoints_to_the_processor(
    make_app, mode, left_to_the_processor
):
    """In background mode the processor checkpoints SQLite's WAL: a request's commit never
    copies megabytes into the database and fsyncs them while the other writers wait."""
    services = make_app(webhook_processing=mode).extensions["waconv"]
    if services.db.dialect != "sqlite":
        assert services.db.checkpoint() == 0  # PostgreSQL checkpoints on its own
        return
    services.db.checkpoint()  # start from an empty WAL
    stores = 2 * SQLITE_AUTOCHECKPOINT_PAGES // 4  # a store writes about four pages
    for i in range(stores):
        ingest.store(services, encode(p.delivery(p.text(f"c{i}", wa_id=f"1555{i:07d}"))))
    copied = services.db.checkpoint()  # what the commits left in the WAL
    assert (copied >= SQLITE_AUTOCHECKPOINT_PAGES) is left_to_the_processor, copied


def test_the_processor_checkpoints_between_its_transactions(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    for i in range(3):
        ingest.store(services, encode(p.delivery(p.text(f"k{i}", wa_id=f"1555{i:07d}"))))
    for budget in ("PROCESS_BUDGET_SECONDS", "IDLE_BUDGET_SECONDS"):
        monkeypatch.setattr(ingest, budget, {"sqlite": 0, "postgresql": 0})
    monkeypatch.setattr(processor, "CHECKPOINT_SECONDS", 0)
    processed_at_checkpoint = []

    def checkpoint() -> int:
        with services.db.transaction() as s:
            processed_at_checkpoint.append(
                s.scalar(
                    select(func.count()).where(WebhookDelivery.status == WebhookDelivery.PROCESSED)
                )
            )
        return 0

    monkeypatch.setattr(services.db, "checkpoint", checkpoint)
    answers = iter([True] * 6)
    processor.run(services, stop=threading.Event(), alive=lambda: next(answers, False))
    # Not only between passes: after each transaction of a pass (one delivery each here).
    assert {1, 2} <= set(processed_at_checkpoint), processed_at_checkpoint


@pytest.mark.parametrize("microsecond", [0, 250])
def test_times_given_to_the_driver_are_those_the_orm_writes(services, microsecond):
    """SQL run on the driver itself (the webhook store, the dispatcher's claim) binds times as
    the ORM does: SQLite compares them as text, so a whole second must still carry its
    ``.000000``."""
    moment = datetime(2026, 3, 2, 12, 0, 0, microsecond, tzinfo=UTC)
    bound = time_binder(services.db.engine.dialect)(moment)
    if services.db.dialect == "sqlite":
        with services.db.transaction() as session:
            orm = session.scalar(select(cast(literal(moment, UTCDateTime()), Text)))
        assert bound == orm == f"2026-03-02 12:00:00.{microsecond:06d}"
    else:
        assert bound == moment
    with services.db.autocommit_cursor(write=False) as cursor:
        cursor.execute(f"SELECT {services.db.placeholder}", (bound,))
        assert from_driver_time(cursor.fetchone()[0]) == moment


def test_sqlite_keeps_its_statement_journals_in_memory(tmp_path):
    # A multi-row INSERT inside a transaction, on a table with triggers, needs a statement
    # journal: it must not spill to a file in the temporary directory.
    engine = make_engine(f"sqlite:///{tmp_path / 'temp.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
    finally:
        engine.dispose()
