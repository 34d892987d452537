"""PostgreSQL: the stores of a moment are committed together (ingest._StoreGroup), and each
request is still answered only once its own row is committed."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from tests import payloads as p
from tests.conftest import encode
from waconv.models import WebhookDelivery
from waconv.services import Services
from waconv.webhooks import ingest

pytestmark = pytest.mark.postgres_only

WAIT = 10  # seconds: a bound on waiting for another thread, never a time rule


def body(n: int) -> bytes:
    return encode(p.delivery(p.text(f"m{n}", wa_id=f"1555000{n:04d}")))


def stored(services: Services) -> dict[str, int]:
    """Delivery id by body digest."""
    with services.db.transaction() as s:
        return dict(s.execute(select(WebhookDelivery.body_sha256, WebhookDelivery.id)).all())


class HeldGroups:
    """``_write_group`` recorded, the first call held until ``release``: stores that arrive
    meanwhile wait for the next group."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.first_writing = threading.Event()
        real = ingest._write_group

        def write(db: Any, group: list[Any]) -> None:
            self.sizes.append(len(group))
            if len(self.sizes) == 1:
                self.first_writing.set()
                assert self.release.wait(WAIT)
            if fail is not None and len(self.sizes) == fail:
                raise ConnectionError("server closed the connection unexpectedly")
            real(db, group)

        monkeypatch.setattr(ingest, "_write_group", write)


class Stores:
    """``ingest.store`` of each body in a thread of its own."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.threads: list[threading.Thread] = []

    def start(self, bodies: list[bytes]) -> list[Any]:
        """Their results (or exceptions), filled in as each thread ends."""
        results: list[Any] = [None] * len(bodies)

        def one(i: int, raw: bytes) -> None:
            try:
                results[i] = ingest.store(self.services, raw)
            except Exception as exc:  # the test looks at it
                results[i] = exc

        for i, raw in enumerate(bodies):
            thread = threading.Thread(target=one, args=(i, raw))
            self.threads.append(thread)
            thread.start()
        return results

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a store never returned"


@pytest.fixture
def stores(services: Services) -> Iterator[Stores]:
    started = Stores(services)
    yield started
    for thread in started.threads:
        thread.join(WAIT)


def queued(services: Services, count: int) -> None:
    """Wait (bounded) until ``count`` stores wait for the group being written."""
    group = ingest._store_group(services.db)
    done = threading.Event()
    for _ in range(WAIT * 100):  # polled: a store joining the queue notifies nobody
        with group._changed:
            if len(group._waiting) >= count:
                return
        done.wait(0.01)
    pytest.fail(f"{count} stores never queued")


def test_stores_that_arrive_during_a_write_are_written_together(
    services: Services, monkeypatch: pytest.MonkeyPatch, stores: Stores
) -> None:
    held = HeldGroups(monkeypatch)
    first = stores.start([body(0)])
    assert held.first_writing.wait(WAIT)
    rest = stores.start([body(n) for n in range(1, 6)])
    queued(services, 5)
    assert rest == [None] * 5  # not answered before their rows are written

    held.release.set()
    stores.join()

    assert held.sizes == [1, 5]  # one INSERT, one commit for the five
    results = first + rest
    assert [r.outcome for r in results] == ["stored"] * 6
    ids = stored(services)
    assert sorted(r.delivery_id for r in results) == sorted(ids.values())


def test_the_same_body_twice_in_one_group_is_stored_once(
    services: Services, monkeypatch: pytest.MonkeyPatch, stores: Stores
) -> None:
    earlier = body(9)
    assert ingest.store(services, earlier).outcome == "stored"
    held = HeldGroups(monkeypatch)
    first = stores.start([body(0)])
    assert held.first_writing.wait(WAIT)
    again = body(1)  # a delivery's bytes twice (each body() is a new delivery)
    rest = stores.start([again, again, earlier])
    queued(services, 3)
    held.release.set()
    stores.join()

    twice, old = rest[:2], rest[2]
    ids = stored(services)
    assert sorted(r.outcome for r in twice) == ["duplicate", "stored"]  # whichever came first
    assert twice[0].delivery_id == twice[1].delivery_id
    assert old.outcome == "duplicate"
    assert old.delivery_id == ids[hashlib.sha256(earlier).hexdigest()]
    assert first[0].outcome == "stored"
    with services.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 3


def test_a_failed_group_fails_each_of_its_requests_and_the_next_group_works(
    services: Services, monkeypatch: pytest.MonkeyPatch, stores: Stores
) -> None:
    held = HeldGroups(monkeypatch, fail=2)
    first = stores.start([body(0)])
    assert held.first_writing.wait(WAIT)
    failed = stores.start([body(1), body(2)])
    queued(services, 2)
    held.release.set()
    stores.join()

    assert first[0].outcome == "stored"
    assert [type(r) for r in failed] == [ConnectionError, ConnectionError]  # each request: a 503
    assert ingest.store(services, body(1)).outcome == "stored"  # nothing left "writing"
    assert len(stored(services)) == 2


def test_each_store_of_a_burst_is_answered_with_its_own_row(
    services: Services, stores: Stores
) -> None:
    """Without holding anything: 40 stores at once, each answered with its own row."""
    results = stores.start([body(n) for n in range(40)])
    stores.join()
    assert [r.outcome for r in results] == ["stored"] * 40
    assert sorted(r.delivery_id for r in results) == sorted(stored(services).values())
