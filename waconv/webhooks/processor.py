"""The background processor: applies stored deliveries a moment after their 200.

One daemon thread per app process (each gunicorn worker has its own), started on the first
request the process serves, so it survives gunicorn's fork and needs nothing but the app. It
is woken after each stored delivery and also polls, so deliveries left ``received`` by a crash
or by another process are picked up too. Processing and marking a delivery processed commit
together: a process killed mid-way leaves the delivery ``received`` for the next pass.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from waconv.services import Services
from waconv.webhooks.ingest import process_received

log = logging.getLogger(__name__)

# How often an idle processor looks for deliveries nobody woke it for (crash leftovers,
# deliveries stored by a process that died before processing them).
IDLE_POLL_SECONDS = 1.0
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
        return time.monotonic() - self.last_request < BUSY_WINDOW_SECONDS

    def _run(self) -> None:
        log.info("webhook.processor.started pid=%s", self.pid)
        while not self.stop.is_set():
            self.wakeup.wait(IDLE_POLL_SECONDS)
            self.wakeup.clear()
            try:
                drain(self.services, stop=self.stop, busy=self._busy)
            except Exception:
                log.exception("webhook.processor.error; trying again shortly")
                self.stop.wait(ERROR_PAUSE_SECONDS)


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


def stop(services: Services) -> None:
    processor: Processor | None = services._processor
    if processor is not None and processor.pid == os.getpid():
        processor.stop.set()
        processor.wakeup.set()
        processor.thread.join(timeout=10)
