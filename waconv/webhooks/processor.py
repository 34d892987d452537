"""The background processor: applies stored deliveries a moment after their 200 (Meta's
webhooks, and Shopify orders stored during a burst: see waconv.connectors.backlog).

It needs nothing but the app (``gunicorn wsgi:app`` or ``waconv serve``). Each app process
(each gunicorn worker) runs a supervisor thread, started on the first request it serves, so
after gunicorn's fork. One supervisor per host and database holds an flock; it starts the
processors as child processes at lower CPU priority (nice 10): one on SQLite, one per core
on PostgreSQL. They inherit the lock; if one dies, they are all started again. The other
supervisors wait to take over if their worker dies.

Why a child process and not a thread of the worker: measured under load, a processing thread
competes with its worker's requests for the GIL, and four of them fought each other and the
requests for SQLite's write lock. In a process of its own at nice 10, the kernel gives the
requests the CPU during a burst and the backlog is processed as soon as the burst ends.

Every stored delivery touches the lock file; the processor watches its time stamp, so it sees
deliveries stored by any worker within ``WATCH_SECONDS``, and it looks in the database every
``IDLE_POLL_SECONDS`` anyway, for deliveries left ``received`` by a crash. Processing and
marking a delivery processed commit together: a processor killed mid-way leaves it
``received`` for the next pass. If the worker that started it dies, the processor notices
(its parent changes), finishes its transaction and exits, which frees the lock for another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO

from waconv.clock import utcnow
from waconv.config import Settings
from waconv.connectors import backlog
from waconv.db import host_lock_path
from waconv.services import Services
from waconv.webhooks.ingest import oldest_waiting, process_received

log = logging.getLogger(__name__)

# How soon the processor sees a delivery stored by any worker (it watches the lock file).
WATCH_SECONDS = 0.02
# How often it looks in the database for deliveries nobody announced (left by a crash).
IDLE_POLL_SECONDS = 1.0
# How often a standby supervisor tries to take over.
STANDBY_POLL_SECONDS = 1.0
# After the processor died or hit an unexpected error (database down), wait this long.
ERROR_PAUSE_SECONDS = 2.0
# The processor's CPU priority: below the web workers, which answer Meta.
NICENESS = 10
# Processors per host on PostgreSQL, at most (one per core up to this).
MAX_PROCESSORS = 4
# How long Services.close() waits for the processor to finish its transaction.
STOP_TIMEOUT_SECONDS = 10.0
# While requests arrive (the lock file was touched this recently), the processors rest after
# each transaction BUSY_REST_FACTOR times as long as the transaction took, times their number:
# together they then take at most 1 / BUSY_REST_FACTOR of a core from the requests, however many
# there are (with two on PostgreSQL, resting 4x each took 2 / 5 of a core).
BUSY_WINDOW_SECONDS = 0.2
BUSY_REST_FACTOR = 4.0
# ... but never once the oldest delivery waiting is this old: resting caps processing at a
# fifth of its speed or less, below what a steady stream of requests can bring (one every few
# ms keeps it "busy"), and the backlog would then grow for as long as the stream lasts. Past
# this lag the processors work without resting, still at nice 10. Conversions can wait this
# long: Meta asks for them within the hour; the web workers' answers are what Meta times. At
# 10 s a burst of 20,000 at 1,500 a second (13 s) had its processors stop resting before its
# end, and their share of the CPU slowed its last seconds.
MAX_RESTING_LAG = timedelta(seconds=30)
# How often the processor checkpoints SQLite's WAL (see waconv.db.DEFERRED_AUTOCHECKPOINT_PAGES).
CHECKPOINT_SECONDS = 0.1
# Lowered first thing, so that even its imports yield to the web workers.
CHILD_COMMAND = (
    f"import os; os.nice({NICENESS}); "
    "from waconv.webhooks.processor import child_main; child_main()"
)


class Supervisor:
    """This app process's thread: takes the host's lock when free, and runs the processor."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pid = os.getpid()
        self.stop = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.thread = threading.Thread(target=self._run, name="webhook-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        with open(lock_path(self.services), "a+b") as lock_file:
            while not self.stop.is_set():
                if not _try_lock(lock_file):
                    self.stop.wait(STANDBY_POLL_SECONDS)  # another worker's processor works
                    continue
                try:
                    self._supervise(lock_file)
                except Exception:
                    log.exception("webhook.processor.error; starting it again shortly")
                self.stop.wait(ERROR_PAUSE_SECONDS)

    def _supervise(self, lock_file: IO[bytes]) -> None:
        """Run the processors until one exits or this worker stops; they share the lock."""
        self.children = [self._spawn(lock_file) for _ in range(processor_count(self.services))]
        try:
            while all(child.poll() is None for child in self.children):
                if self.stop.wait(0.5):
                    return
            for child in self.children:
                if child.returncode == 0:
                    # Asked to stop (a signal to the process group, say): no fault. When this
                    # worker is stopping too, its stop comes before the pause ends.
                    log.info("webhook.processor.stopped pid=%s; starting again", child.pid)
                elif child.returncode is not None:
                    log.error(
                        "webhook.processor.exited pid=%s code=%s; starting again",
                        child.pid,
                        child.returncode,
                    )
        finally:
            for child in self.children:
                if child.poll() is None:
                    child.terminate()  # it finishes its transaction first
            for child in self.children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(STOP_TIMEOUT_SECONDS)
                if child.poll() is None:
                    child.kill()
                    child.wait()

    def _spawn(self, lock_file: IO[bytes]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(  # noqa: S603 (our own interpreter and code)
            # The child checks its parent against this pid: one that died before the child
            # could ask for its parent's pid would otherwise pass for alive, as init.
            [sys.executable, "-c", CHILD_COMMAND, str(self.pid)],
            stdin=subprocess.PIPE,
            pass_fds=(lock_file.fileno(),),
        )
        assert child.stdin is not None
        with child.stdin:
            child.stdin.write(json.dumps(dataclasses.asdict(self.services.settings)).encode())
        log.info("webhook.processor.started pid=%s", child.pid)
        return child


def processor_count(services: Services) -> int:
    """One processor per core on PostgreSQL (they share the work with SKIP LOCKED, and a
    backlog is caught up on every core once a burst ends); one on SQLite, which has one
    writer at a time."""
    if services.db.dialect != "postgresql":
        return 1
    return max(1, min(MAX_PROCESSORS, os.cpu_count() or 1))


def child_main() -> None:
    """The processor process: ``python -c CHILD_COMMAND PARENT_PID``, settings on stdin, lock
    inherited. It stops when its parent is no longer PARENT_PID's process (orphaned)."""
    from waconv.logs import configure_logging

    values = json.load(sys.stdin)
    settings = Settings(**{**values, "dev_secrets": tuple(values["dev_secrets"])})
    configure_logging(settings)
    parent = int(sys.argv[1])
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    services = Services.build(settings)
    try:
        run(services, stop=stop, alive=lambda: os.getppid() == parent)
    finally:
        services.close()


def run(services: Services, *, stop: threading.Event, alive: Callable[[], bool]) -> None:
    """Process deliveries as they are announced, until stopped or orphaned."""
    path = lock_path(services)
    rest_factor = BUSY_REST_FACTOR * processor_count(services)
    seen = -1.0
    last_poll = 0.0

    def busy() -> bool:
        return time.time() - _mtime(path) < BUSY_WINDOW_SECONDS

    checkpoints = _Checkpoints(services)
    # The last pass ran while requests arrived: what it left for the burst's end (stored
    # Shopify orders) is taken as soon as the burst ends, not at the next idle poll.
    left_for_quiet = False
    while not stop.is_set() and alive():
        checkpoints.due()
        touched = _mtime(path)
        quiet_again = left_for_quiet and not busy()
        if touched != seen or quiet_again or time.monotonic() - last_poll >= IDLE_POLL_SECONDS:
            seen, last_poll = touched, time.monotonic()
            left_for_quiet = busy()
            try:
                drain(
                    services,
                    stop=stop,
                    busy=busy,
                    alive=alive,
                    rest_factor=rest_factor,
                    between=checkpoints.due,
                )
            except Exception:
                log.exception("webhook.processor.error; trying again shortly")
                stop.wait(ERROR_PAUSE_SECONDS)
        stop.wait(WATCH_SECONDS)


def drain(
    services: Services,
    *,
    stop: threading.Event | None = None,
    busy: Callable[[], bool] | None = None,
    alive: Callable[[], bool] | None = None,
    rest_factor: float = BUSY_REST_FACTOR,
    between: Callable[[], None] | None = None,
) -> int:
    """Process every stored delivery, in short transactions; return how many. Between two
    transactions, stop when asked to or when ``alive()`` says the worker that started this
    processor is gone (a backlog must not keep an orphan working beside its successor).

    While requests keep arriving (``busy``), rest after each transaction ``rest_factor`` times
    as long as it took: the requests get the CPU (and on SQLite the write lock) back, and the
    backlog is worked off once the burst is over; unless the oldest delivery waiting is
    ``MAX_RESTING_LAG`` old already. ``between`` is called after each transaction.
    """
    total = 0
    lag = _Lag(lambda: oldest_waiting(services))
    orders_lag = _Lag(lambda: backlog.oldest_waiting(services))
    while (stop is None or not stop.is_set()) and (alive is None or alive()):
        started = time.monotonic()
        idle = busy is None or not busy()
        done = process_received(services, idle=idle)
        # Shopify orders stored during a burst wait for its end (see backlog.apply_received),
        # unless the burst lasts so long that the oldest has waited MAX_RESTING_LAG.
        orders_behind = not orders_lag.below(MAX_RESTING_LAG)
        if idle or orders_behind:
            done += backlog.apply_received(services, busy=None if orders_behind else busy)
        total += done
        if done == 0:
            break
        if between is not None:
            between()
        resting = lag.below(MAX_RESTING_LAG) and not orders_behind
        if busy is not None and busy() and resting:
            time.sleep(rest_factor * (time.monotonic() - started))
    return total


class _Checkpoints:
    """SQLite's WAL checkpointed by the processor, at most every CHECKPOINT_SECONDS, so that
    no webhook request has to (see waconv.db.DEFERRED_AUTOCHECKPOINT_PAGES)."""

    def __init__(self, services: Services) -> None:
        self.db = services.db
        self.last = time.monotonic()

    def due(self) -> None:
        if time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            self.db.checkpoint()
            self.last = time.monotonic()


class _Lag:
    """How old the oldest waiting delivery is, looked up at most once a second."""

    EVERY_SECONDS = 1.0

    def __init__(self, oldest: Callable[[], datetime | None]) -> None:
        self.oldest = oldest
        self.looked_at: float | None = None
        self.value = timedelta(0)

    def below(self, limit: timedelta) -> bool:
        now = time.monotonic()
        if self.looked_at is None or now - self.looked_at >= self.EVERY_SECONDS:
            oldest = self.oldest()
            self.value = timedelta(0) if oldest is None else utcnow() - oldest
            self.looked_at = now
        return self.value < limit


def lock_path(services: Services) -> str:
    """One lock per host and database: the supervisors of all workers on it share this file."""
    return host_lock_path(services.settings.database_url, "processor")  # cached: hot path


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _try_lock(lock_file: IO[bytes]) -> bool:
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    # Held until every descriptor of this open file is closed: the supervisor's and the
    # processor's, which inherits it.
    return True


_lock = threading.Lock()


def ensure_running(services: Services) -> Supervisor:
    """Start this process's supervisor if it is not running (after a fork, for instance)."""
    supervisor: Supervisor | None = services._processor
    if supervisor is not None and supervisor.pid == os.getpid() and supervisor.thread.is_alive():
        return supervisor
    with _lock:
        supervisor = services._processor
        if supervisor is None or supervisor.pid != os.getpid() or not supervisor.thread.is_alive():
            first = services._processor is None
            supervisor = Supervisor(services)
            services._processor = supervisor
            supervisor.start()
            if first:
                services.on_close(lambda: stop(services))
    return supervisor


def wake(services: Services) -> None:
    """Announce a stored delivery to the processor, whichever worker started it."""
    ensure_running(services)
    with contextlib.suppress(OSError):
        os.utime(lock_path(services))


def stop(services: Services) -> None:
    supervisor: Supervisor | None = services._processor
    if supervisor is not None and supervisor.pid == os.getpid():
        supervisor.stop.set()
        supervisor.thread.join(timeout=STOP_TIMEOUT_SECONDS + 5)
