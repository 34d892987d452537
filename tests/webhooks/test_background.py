"""Background processing, the production default: the request stores, a thread applies."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from tests import payloads as p
from tests.conftest import encode, signed_headers
from waconv.models import Message, WebhookDelivery
from waconv.webhooks import batch, ingest, processor

# Bounded wait for the processor thread (the contract: effects within a few seconds).
pytestmark = pytest.mark.slow  # processors are child processes

EFFECT_DEADLINE_SECONDS = 5.0


def _failing(monkeypatch, fails, calls=None):
    """Make processing raise ``fails(delivery_id, payload)`` (an exception or None) in both
    paths: set-based (a batch of plain deliveries) and one by one (``process_payload``).
    ``calls`` records ("batch", ids) and ("one", id)."""
    real_one, real_plain = ingest.process_payload, batch.apply_plain

    def one(session, services_, delivery_id, payload):
        if calls is not None:
            calls.append(("one", delivery_id))
        exc = fails(delivery_id, payload)
        if exc is not None:
            raise exc
        return real_one(session, services_, delivery_id, payload)

    def plain(session, services_, plains):
        if calls is not None:
            calls.append(("batch", [m.delivery_id for m in plains]))
        for message in plains:
            exc = fails(message.delivery_id, message.message)
            if exc is not None:
                raise exc
        return real_plain(session, services_, plains)

    monkeypatch.setattr(ingest, "process_payload", one)
    monkeypatch.setattr(batch, "apply_plain", plain)


def _statuses(services):
    with services.db.transaction() as s:
        return dict(
            s.execute(
                select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
            ).all()
        )


def test_effects_show_within_seconds_with_nothing_but_the_app(make_app, admin_headers):
    app = make_app(webhook_processing="background")
    client = app.test_client()
    body = encode(p.delivery(p.message(ref=p.referral(), wa_id="15550001111")))
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    deadline = time.monotonic() + EFFECT_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        r = client.get("/admin/conversations/15550001111", headers=admin_headers)
        if r.status_code == 200:
            break
        time.sleep(0.05)  # waiting for another thread, not a time rule
    assert r.status_code == 200
    assert r.json["ctwa_clid"] == p.CLICK_ID
    assert _statuses(app.extensions["waconv"]) == {WebhookDelivery.PROCESSED: 1}


def test_the_request_only_stores(make_app):
    services = make_app(webhook_processing="background").extensions["waconv"]
    body = encode(p.delivery(p.text("hello")))
    result = ingest.store(services, body)
    assert result.outcome == "stored"
    assert _statuses(services) == {WebhookDelivery.RECEIVED: 1}
    assert ingest.store(services, body).outcome == "duplicate"
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 0


def test_deliveries_left_by_a_crash_are_processed_once(make_app):
    services = make_app(webhook_processing="background").extensions["waconv"]
    bodies = [encode(p.delivery(p.text(f"m{i}", wa_id=f"1555000{i:04d}"))) for i in range(30)]
    for body in bodies:
        ingest.store(services, body)
    assert processor.drain(services) == 30
    assert processor.drain(services) == 0
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 30
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 30}


def test_one_transaction_stops_taking_deliveries_after_its_budget(make_app):
    services = make_app(webhook_processing="background").extensions["waconv"]
    for i in range(3):
        ingest.store(services, encode(p.delivery(p.text(f"m{i}", wa_id=f"1555000{i:04d}"))))
    # A zero budget still processes one delivery per transaction, never none.
    assert ingest.process_received(services, budget_seconds=0) == 1
    assert ingest.process_received(services, budget_seconds=60) == 2


def test_a_failing_delivery_does_not_stop_the_others(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    bad = encode(p.delivery(p.text("boom", wa_id="15550009999")))
    good = encode(p.delivery(p.text("fine", wa_id="15550008888")))
    ingest.store(services, bad)
    ingest.store(services, good)
    _failing(
        monkeypatch, lambda _, payload: RuntimeError("bug") if "boom" in str(payload) else None
    )
    assert processor.drain(services) == 2
    with services.db.transaction() as s:
        rows = dict(s.execute(select(WebhookDelivery.body, WebhookDelivery.status)).all())
        texts = set(s.scalars(select(Message.text)))
    assert rows == {bad: WebhookDelivery.FAILED, good: WebhookDelivery.PROCESSED}
    assert texts == {"fine"}


def test_one_processor_per_host_works_the_others_stand_by(make_app):
    first = make_app(webhook_processing="background").extensions["waconv"]
    second = make_app(webhook_processing="background").extensions["waconv"]
    assert processor.lock_path(first) == processor.lock_path(second)
    processor.ensure_running(first)
    processor.ensure_running(second)
    deadline = time.monotonic() + EFFECT_DEADLINE_SECONDS
    while not _lock_taken(processor.lock_path(first)):  # one of the two threads takes it
        assert time.monotonic() < deadline
        time.sleep(0.02)  # waiting for another thread, not a time rule
    # Whichever works, a delivery stored through the other is still processed.
    body = encode(p.delivery(p.text("via the standby", wa_id="15550007777")))
    ingest.store(second, body)
    processor.wake(second)
    while _statuses(second).get(WebhookDelivery.PROCESSED) != 1:
        assert time.monotonic() < deadline, _statuses(second)
        time.sleep(0.05)  # waiting for another thread, not a time rule


def _lock_taken(path: str) -> bool:
    with open(path, "a+b") as probe:
        return not processor._try_lock(probe)


def _wait_for(condition, what: str, seconds: float = EFFECT_DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # waiting for another process, not a time rule


def test_processors_are_child_processes_at_lower_priority_and_restarted_if_one_dies(make_app):
    services = make_app(webhook_processing="background").extensions["waconv"]
    count = processor.processor_count(services)
    assert count == (1 if services.db.dialect == "sqlite" else min(4, os.cpu_count() or 1))
    supervisor = processor.ensure_running(services)
    _wait_for(lambda: len(supervisor.children) == count, "the processors were not started")
    first = list(supervisor.children)
    assert os.getpid() not in {c.pid for c in first}
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + processor.NICENESS)
    for child in first:
        _wait_for(lambda c=child: os.getpriority(os.PRIO_PROCESS, c.pid) == expected, "niced")

    first[0].kill()
    restart = processor.ERROR_PAUSE_SECONDS + EFFECT_DEADLINE_SECONDS
    _wait_for(
        lambda: len(supervisor.children) == count and first[0] not in supervisor.children,
        "the processors were not started again",
        restart,
    )
    assert all(c.poll() is not None for c in first)  # the survivors were stopped, not doubled
    ingest.store(services, encode(p.delivery(p.text("after the crash", wa_id="15550006666"))))
    processor.wake(services)
    _wait_for(lambda: _statuses(services) == {WebhookDelivery.PROCESSED: 1}, "not processed")


def test_the_processor_leaves_when_the_worker_that_started_it_is_gone(make_app):
    services = make_app(webhook_processing="background").extensions["waconv"]
    ingest.store(services, encode(p.delivery(p.text("last one", wa_id="15550005555"))))
    answers = iter([True, True])  # its parent is there for one pass, then gone
    processor.run(services, stop=threading.Event(), alive=lambda: next(answers, False))
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 1}


def test_a_failing_delivery_is_isolated_and_the_batch_still_commits_once(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    bodies = [encode(p.delivery(p.text(f"m{i}", wa_id=f"1555000{i:04d}"))) for i in range(5)]
    bad = encode(p.delivery(p.text("boom", wa_id="15550009999")))
    ids = [ingest.store(services, b).delivery_id for b in [*bodies[:2], bad, *bodies[2:]]]
    calls: list = []
    _failing(
        monkeypatch,
        lambda _, payload: RuntimeError("bug") if "boom" in str(payload) else None,
        calls,
    )
    assert ingest.process_received(services, budget_seconds=60) == 6
    # Applied together first (one set-based step for all six), then one by one in savepoints.
    assert calls == [("batch", ids)] + [("one", i) for i in ids]
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 5
        items = dict(s.execute(select(WebhookDelivery.body, WebhookDelivery.items)).all())
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 5, WebhookDelivery.FAILED: 1}
    assert {items[b] for b in bodies} == {1}


def test_an_orphaned_processor_leaves_between_transactions_of_a_backlog(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    for i in range(5):
        ingest.store(services, encode(p.delivery(p.text(f"b{i}", wa_id=f"1555000{i:04d}"))))
    # One delivery per transaction: the backlog takes five transactions.
    for budget in ("PROCESS_BUDGET_SECONDS", "IDLE_BUDGET_SECONDS"):
        monkeypatch.setattr(ingest, budget, {"sqlite": 0, "postgresql": 0})
    answers = iter([True, True])  # run() looks once, drain() once; then the worker is gone
    processor.run(services, stop=threading.Event(), alive=lambda: next(answers, False))
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 1, WebhookDelivery.RECEIVED: 4}


def test_a_processor_whose_worker_died_before_it_started_stops(make_app):
    # The child learns its worker's pid from the command line: asking os.getppid() once
    # started, a child whose worker had died meanwhile got init's pid, took init for its
    # worker and never stopped (seen after gunicorn was killed right after a first delivery).
    services = make_app(webhook_processing="background").extensions["waconv"]
    settings = json.dumps(dataclasses.asdict(services.settings)).encode()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is not this child's parent
    child = subprocess.run(
        [sys.executable, "-c", processor.CHILD_COMMAND, str(gone.pid)],
        input=settings,
        timeout=60,
        capture_output=True,
    )
    assert child.returncode == 0, child.stderr.decode()[-2000:]


def _drain_busy_at(services, monkeypatch, *, stored_at: str, drained_at: str) -> list[float]:
    """Three transactions' worth of deliveries stored at ``stored_at``, drained at
    ``drained_at`` while requests keep arriving: the rests the processor took after each."""
    count = 2 * ingest.PROCESS_BATCH + 1
    with freeze_time(stored_at):
        for i in range(count):
            ingest.store(services, encode(p.delivery(p.text(f"r{i}", wa_id=f"1555000{i:04d}"))))
    rests: list[float] = []
    monkeypatch.setattr(processor.time, "sleep", rests.append)
    # The clock stands still, so the budget never ends a transaction: no pace from before.
    monkeypatch.setattr(ingest, "_pace", ingest._Pace(0.0))
    with freeze_time(drained_at):  # the clock stands still: the lag is looked up once
        assert processor.drain(services, busy=lambda: True) == count
    return rests


def test_while_requests_arrive_the_processor_rests_between_transactions(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    rests = _drain_busy_at(
        services, monkeypatch, stored_at="2026-11-24 10:00:00", drained_at="2026-11-24 10:00:02"
    )
    assert len(rests) == 3


def test_a_backlog_past_the_resting_lag_is_worked_without_rest(make_app, monkeypatch):
    services = make_app(webhook_processing="background").extensions["waconv"]
    late = processor.MAX_RESTING_LAG.total_seconds() + 1
    rests = _drain_busy_at(
        services,
        monkeypatch,
        stored_at="2026-11-24 10:00:00",
        drained_at=f"2026-11-24 10:00:{late:02.0f}",
    )
    assert rests == []


def test_the_processors_rest_longer_the_more_of_them_there_are(make_app, monkeypatch):
    """Together they take at most 1 / BUSY_REST_FACTOR of a core, however many run."""
    services = make_app(webhook_processing="background").extensions["waconv"]
    ingest.store(services, encode(p.delivery(p.text("rest", wa_id="15550006666"))))
    monkeypatch.setattr(processor, "processor_count", lambda services: 3)
    factors = []
    monkeypatch.setattr(
        processor, "drain", lambda services, **kw: factors.append(kw["rest_factor"]) or 0
    )
    answers = iter([True])
    processor.run(services, stop=threading.Event(), alive=lambda: next(answers, False))
    assert factors == [3 * processor.BUSY_REST_FACTOR]


def test_what_a_burst_left_is_taken_as_soon_as_it_ends(make_app, monkeypatch):
    """Stored Shopify orders wait for the burst's end: the processor looks again the moment
    the burst is over (the lock file untouched for BUSY_WINDOW_SECONDS), not at its idle poll."""
    services = make_app(webhook_processing="background").extensions["waconv"]
    touched = 1_000_000.0
    # Seconds since the last request, at each turn of the loop: a burst, then quiet.
    since = iter([0.05, 0.1, processor.BUSY_WINDOW_SECONDS + 0.05, 0.5, 0.6])
    now = {"time": touched}

    def alive():
        try:
            now["time"] = touched + next(since)
        except StopIteration:
            return False
        return True

    monkeypatch.setattr(processor, "_mtime", lambda path: touched)
    monkeypatch.setattr(processor.time, "time", lambda: now["time"])
    monkeypatch.setattr(processor.time, "monotonic", lambda: 0.0)  # no idle poll comes due
    drains = []
    monkeypatch.setattr(
        processor, "drain", lambda services, **kw: drains.append(now["time"] - touched) or 0
    )
    processor.run(services, stop=threading.Event(), alive=alive)
    assert drains == pytest.approx([0.05, processor.BUSY_WINDOW_SECONDS + 0.05])


class _Deadlock(Exception):
    sqlstate = "40P01"  # what psycopg's DeadlockDetected carries


def test_a_deadlock_victim_in_a_batch_is_left_for_the_next_transaction(make_app, monkeypatch):
    """Not retried in place (the batch still holds its earlier deliveries' locks, so the two
    processors would deadlock again), and never recorded as failed: it is processed later."""
    services = make_app(webhook_processing="background").extensions["waconv"]
    stored = [
        ingest.store(services, encode(p.delivery(p.text(f"d{i}", wa_id=f"1555000{i:04d}"))))
        for i in range(3)
    ]
    victim = stored[1].delivery_id
    victims = []

    def fails(delivery_id, _):
        if delivery_id == victim and len(victims) < 2:  # in the batch, then in its savepoint
            victims.append(delivery_id)
            return OperationalError("SELECT ... FOR UPDATE", {}, _Deadlock("deadlock detected"))
        return None

    _failing(monkeypatch, fails)
    assert ingest.process_received(services, budget_seconds=60) == 2
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 2, WebhookDelivery.RECEIVED: 1}
    assert ingest.process_received(services, budget_seconds=60) == 1
    assert _statuses(services) == {WebhookDelivery.PROCESSED: 3}


def test_a_processor_that_stops_cleanly_is_not_logged_as_an_error(make_app, monkeypatch, caplog):
    # A signal to the whole process group stops the child first (exit 0): that is no fault,
    # while any other exit is.
    services = make_app(webhook_processing="background").extensions["waconv"]
    supervisor = processor.Supervisor(services)
    caplog.set_level(logging.INFO)
    for code, level in ((0, logging.INFO), (3, logging.ERROR)):
        caplog.clear()
        monkeypatch.setattr(
            supervisor,
            "_spawn",
            lambda _lock, code=code: subprocess.Popen([sys.executable, "-c", f"exit({code})"]),
        )
        supervisor._supervise(None)
        (record,) = [r for r in caplog.records if r.name == processor.log.name]
        assert record.levelno == level, record.getMessage()
