"""``waconv dispatch [--once]``: exit codes, SIGTERM, idle polling, and the forever loop."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time

from tests.conftest import ACCESS_TOKEN, WABA_ID
from tests.dispatch.helpers import account, clid, conversions, enqueue_many, enqueue_one, one
from waconv.cli import main
from waconv.clock import isoformat
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Account, Conversion
from waconv.services import Services

ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT_URL = "postgresql+psycopg://postgres@127.0.0.1:1/x"  # nothing listens on port 1
START_SECONDS = 20.0  # a fresh interpreter importing flask, sqlalchemy ... on a busy machine
SEND_SECONDS = 2.5  # idle, the dispatcher looks at least once a second; a send takes ms
STOP_SECONDS = 10.0


def poll(condition: Callable[[], object], seconds: float) -> float:
    """Wait until ``condition()`` is true; the seconds it took. Only for other processes and
    threads: time rules are driven by freezegun."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if condition():
            return time.monotonic() - began
        time.sleep(0.02)
    pytest.fail(f"not within {seconds} s")


def environment(services: Services) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACONV_")}
    s = services.settings
    env.update(
        WACONV_DATABASE_URL=s.database_url,
        WACONV_GRAPH_URL=s.graph_url,
        WACONV_ACCESS_TOKEN=ACCESS_TOKEN,
        WACONV_RULES_FILE=s.rules_file,
        WACONV_GRAPH_TIMEOUT_SECONDS="5",
        WACONV_LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def waconv(
    ready: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Result]:
    """``waconv ARGS`` in this process, configured like the test app."""
    monkeypatch.chdir(tmp_path)  # no instance/dev-secrets.json of a developer's clone
    for name, value in environment(ready).items():
        if name.startswith("WACONV_"):
            monkeypatch.setenv(name, value)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args))

    return run


def test_dispatch_once_sends_and_exits_0(
    waconv: Callable[..., Result], ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 3)

    result = waconv("dispatch", "--once")

    assert result.exit_code == 0, result.output
    assert "sent 3, retrying 0, failed 0, expired 0, held 0 in 1 requests" in result.stdout
    assert {r.status for r in conversions(ready)} == {Conversion.SENT}


def test_dispatch_warns_at_start_while_a_test_event_code_is_set(
    waconv: Callable[..., Result],
    ready: Services,
    fake_graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In production the dispatcher is a process of its own: the one that sends test events
    # must say so, not only the app.
    monkeypatch.setenv("WACONV_TEST_EVENT_CODE", "TEST12345")
    caplog.set_level(logging.WARNING)
    result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert any(r.getMessage().startswith("config.test_event_code") for r in caplog.records)


def test_dispatch_freezes_what_start_up_made_before_sending(
    waconv: Callable[..., Result],
    ready: Services,
    fake_graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of the collector's reach, the modules and app are not walked again by every full
    collection while batches are built."""
    enqueue_many(ready, 1)
    order: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: order.append("freeze"))
    real = Dispatcher.run_once
    monkeypatch.setattr(
        Dispatcher, "run_once", lambda self, **kw: order.append("send") or real(self, **kw)
    )

    assert waconv("dispatch", "--once").exit_code == 0
    assert order == ["freeze", "send"]


def test_dispatch_once_exits_0_when_meta_refused_events(
    waconv: Callable[..., Result], ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 4)
    fake_graph.invalid_clids.add(clid("evt", 1))

    result = waconv("dispatch", "--once")

    assert result.exit_code == 0, result.output
    assert "sent 3, retrying 0, failed 1" in result.stdout


def test_dispatch_once_exits_0_when_the_account_is_paused(
    waconv: Callable[..., Result], ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 2)
    fake_graph.valid_tokens.clear()

    result = waconv("dispatch", "--once")

    assert result.exit_code == 0, result.output
    assert f"account {WABA_ID} paused" in result.stderr
    assert ACCESS_TOKEN not in result.output


def test_dispatch_once_exits_1_when_the_database_is_unreachable(
    waconv: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACONV_DATABASE_URL", CLOSED_PORT_URL)

    result = waconv("dispatch", "--once")

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: cannot reach the database")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def dispatcher_process(
    ready: Services, fake_graph: FakeGraph, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "dispatch.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "waconv.cli", "dispatch"],
            cwd=tmp_path,
            env=environment(ready),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            poll(lambda: "dispatcher.started" in log.read_text(), START_SECONDS)
            yield process, log
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_SECONDS)


@pytest.mark.slow
def test_dispatch_forever_sends_new_events_within_two_seconds_and_stops_on_sigterm(
    dispatcher_process: tuple[subprocess.Popen[bytes], Path],
    ready: Services,
    fake_graph: FakeGraph,
) -> None:
    process, log = dispatcher_process

    # Idle, it looks for due events at least once a second.
    enqueue_one(ready, "while-running")
    took = poll(lambda: "while-running" in fake_graph.accepted_event_ids(), 3 * SEND_SECONDS)
    print(f"idle dispatcher sent a new event after {took:.2f} s")
    assert took < SEND_SECONDS
    poll(lambda: one(ready, "while-running").status == Conversion.SENT, SEND_SECONDS)

    # SIGTERM while a batch is in flight: Meta answers after 1.5 s, the batch is recorded,
    # then the process exits 0.
    fake_graph.fail_next(1, "timeout", delay=1.5, accept=True)
    enqueue_one(ready, "in-flight")
    poll(lambda: len(fake_graph.events_requests()) == 2, 3 * SEND_SECONDS)
    assert "in-flight" not in fake_graph.accepted_event_ids()  # not answered yet
    process.send_signal(signal.SIGTERM)

    assert process.wait(STOP_SECONDS) == 0, log.read_text()
    assert one(ready, "in-flight").status == Conversion.SENT
    assert fake_graph.accepted_event_ids()["in-flight"] == 1
    assert "dispatcher.stopped" in log.read_text()


@pytest.mark.slow
def test_dispatch_forever_stops_at_once_when_idle(
    dispatcher_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, log = dispatcher_process
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(STOP_SECONDS) == 0, log.read_text()
    assert time.monotonic() - began < 2.0


def test_a_stop_request_sends_no_batch_after_the_one_in_flight(
    ready: Services, fake_graph: FakeGraph
) -> None:
    # The contract: on SIGTERM the batch in flight is finished first, and nothing after it.
    # The next batch, read while the first was on the wire, stays pending.
    enqueue_many(ready, 6)
    fake_graph.fail_next(1, "timeout", delay=1.0, accept=True)
    stop = threading.Event()
    worker = threading.Thread(target=Dispatcher(ready, batch_size=2).run_forever, args=(stop,))
    worker.start()
    poll(lambda: len(fake_graph.events_requests()) == 1, SEND_SECONDS)
    stop.set()
    worker.join(STOP_SECONDS)
    assert not worker.is_alive()
    assert len(fake_graph.events_requests()) == 1
    assert (
        sorted(r.status for r in conversions(ready))
        == [Conversion.PENDING] * 4 + [Conversion.SENT] * 2
    )


def test_run_forever_keeps_going_after_a_failed_step(
    ready: Services, fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that raises (database restarting ...) is logged; the loop goes on."""
    dispatcher = Dispatcher(ready)
    real_step = dispatcher.step
    calls: list[int] = []

    def flaky_step() -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database restarting")
        return real_step()

    monkeypatch.setattr(dispatcher, "step", flaky_step)
    enqueue_many(ready, 2)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop,))
    thread.start()
    try:
        poll(lambda: len(fake_graph.accepted_event_ids()) == 2, 3 * SEND_SECONDS)
    finally:
        stop.set()
        thread.join(STOP_SECONDS)
    assert not thread.is_alive()
    assert {r.status for r in conversions(ready)} == {Conversion.SENT}


def test_a_dispatcher_started_with_a_fixed_token_tries_the_paused_account_at_once(
    waconv: Callable[..., Result],
    ready: Services,
    fake_graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_graph.valid_tokens = {"the-fixed-token"}  # Meta refuses WACONV_ACCESS_TOKEN: code 190
    enqueue_many(ready, 2)
    paused = waconv("dispatch", "--once")
    assert paused.exit_code == 0, paused.output
    assert account(ready).status == Account.PAUSED

    # The operator fixes the token in the environment and restarts the dispatcher: it does
    # not wait for the 5-minute probe.
    monkeypatch.setenv("WACONV_ACCESS_TOKEN", "the-fixed-token")
    result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert account(ready).status == Account.ACTIVE
    assert {c.status for c in conversions(ready)} == {Conversion.SENT}


# --- an empty run says why, per account -------------------------------------------------------


def test_an_empty_run_says_why_held_with_the_command_that_fixes_it(
    waconv: Callable[..., Result], ready: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACONV_ACCESS_TOKEN", "")
    enqueue_many(ready, 2)
    result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert f"account {WABA_ID}: 2 events held: no access token" in result.stdout
    assert f"waconv accounts set-token --waba-id {WABA_ID}" in result.stdout


def test_an_empty_run_says_until_when_an_account_is_paused(
    waconv: Callable[..., Result], ready: Services, fake_graph: FakeGraph
) -> None:
    fake_graph.valid_tokens = {"another-token"}
    with freeze_time("2025-06-20T12:00:00Z"):
        enqueue_many(ready, 1)
        waconv("dispatch", "--once")
        result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert f"account {WABA_ID}: paused until 2025-06-20T12:05:00Z" in result.stdout
    assert "1 event waiting" in result.stdout


def test_an_empty_run_says_until_when_an_account_backs_off(
    waconv: Callable[..., Result], ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 3)
    fake_graph.fail_next(1, "http500")
    first = waconv("dispatch", "--once")
    assert "retrying 3" in first.stdout
    retry_at = min(c.next_attempt_at for c in conversions(ready))
    result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert f"account {WABA_ID}: 3 events backing off until {isoformat(retry_at)}" in result.stdout


def test_a_run_with_nothing_pending_says_so(waconv: Callable[..., Result], ready: Services) -> None:
    result = waconv("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert "nothing to send: no conversion is pending" in result.stdout
