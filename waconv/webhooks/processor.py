"""The background processor: applies stored deliveries a moment after their 200.

A daemon thread in each app process (each gunicorn worker), started on the first request the
process serves, so it survives gunicorn's fork and needs nothing but the app. Only one of them
per host and database works at a time (it holds an flock; the others wait to take over if it
dies): measured, four processors on two cores fought each other and the requests for SQLite's
write lock. The worker's thread is woken by its own requests; every stored delivery also
touches the lock file, so the working processor sees the load and polls often enough to catch
deliveries stored by the other workers, or left ``received`` by a crash. Processing and marking
a delivery processed commit together: a process killed mid-way leaves it ``received`` for the
next pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO

from waconv.services import Services
from waconv.webhooks.ingest import process_received

log = logging.getLogger(__name__)

# How often the working processor looks for deliveries nobody woke it for (stored by another
# worker, or left by a crash); a standby one tries this often to take over.
IDLE_POLL_SECONDS = 0.25
STANDBY_POLL_SECONDS = 1.0
# After an unexpected error (database down), wait this long before trying again.
ERROR_PAUSE_SECONDS = 2.0
# While requests keep arriving, the processor rests as long as it worked after each
# transaction: Meta's requests get the CPU (and SQLite's write lock) at least half the time,
# and the backlog is caught up when the burst ends.
BUSY_WINDOW_SECONDS = 0.2


class Processor:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.pid = os.getpid()
        self.wakeup = threading.Event()
        self.stop = threading.Event()
        self.last_request = 0.0  # time.monotonic() of the latest stored delivery
        self.thread = threading.Thread(target=self._run, name="webhook-processor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _busy(self) -> bool:
        """Requests arrived lately, in this worker or (through the lock file) any other."""
        try:
            touched = os.stat(lock_path(self.services)).st_mtime
        except OSError:
            touched = 0.0
        return (
            time.monotonic() - self.last_request < BUSY_WINDOW_SECONDS
            or time.time() - touched < BUSY_WINDOW_SECONDS
        )

    def _run(self) -> None:
        log.info("webhook.processor.started pid=%s", self.pid)
        with open(lock_path(self.services), "a+b") as lock_file:
            while not self.stop.is_set():
                if not _try_lock(lock_file):
                    self.stop.wait(STANDBY_POLL_SECONDS)  # another worker processes
                    continue
                self.wakeup.wait(IDLE_POLL_SECONDS)
                self.wakeup.clear()
                try:
                    drain(self.services, stop=self.stop, busy=self._busy)
                except Exception:
                    log.exception("webhook.processor.error; trying again shortly")
                    self.stop.wait(ERROR_PAUSE_SECONDS)


def lock_path(services: Services) -> str:
    """One lock per host and database: the processors of all workers on it share this file."""
    digest = hashlib.sha256(services.settings.database_url.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"waconv-processor-{digest}.lock")


def _try_lock(lock_file: IO[bytes]) -> bool:
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True  # held until the file is closed: when the thread ends or the process dies


def drain(
    services: Services,
    *,
    stop: threading.Event | None = None,
    busy: Callable[[], bool] | None = None,
) -> int:
    """Process every stored delivery, in short transactions; return how many."""
    total = 0
    while stop is None or not stop.is_set():
        started = time.monotonic()
        done = process_received(services)
        total += done
        if done == 0:
            return total
        if busy is not None and busy():
            time.sleep(time.monotonic() - started)
    return total


_lock = threading.Lock()


def ensure_running(services: Services) -> Processor:
    """Start this process's processor if it is not running (after a fork, for instance)."""
    processor: Processor | None = services._processor
    if processor is not None and processor.pid == os.getpid() and processor.thread.is_alive():
        return processor
    with _lock:
        processor = services._processor
        if processor is None or processor.pid != os.getpid() or not processor.thread.is_alive():
            processor = Processor(services)
            services._processor = processor
            processor.start()
    return processor


def wake(services: Services) -> None:
    processor = ensure_running(services)
    processor.last_request = time.monotonic()
    processor.wakeup.set()
    with contextlib.suppress(OSError):
        os.utime(lock_path(services))  # tells the working processor, in whichever worker


def stop(services: Services) -> None:
    processor: Processor | None = services._processor
    if processor is not None and processor.pid == os.getpid():
        processor.stop.set()
        processor.wakeup.set()
        processor.thread.join(timeout=10)
