"""Account problems: a revoked token pauses the account (told once), nothing is lost, sending
resumes when the token works again; events without a token or dataset are held."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import select

from tests.conftest import ACCESS_TOKEN, WABA_ID
from tests.dispatch.helpers import account, conversions, enqueue_many, setup_account
from waconv.accounts import service
from waconv.accounts.registry import PAUSED_PROBE_INTERVAL
from waconv.clock import utcnow
from waconv.conversions.dispatcher import HOLD_DELAY, PROVISION_RETRY, Dispatcher
from waconv.graph.client import GraphClient
from waconv.graph.fake import FakeGraph, dataset_id_for
from waconv.models import Account, Conversion
from waconv.services import Services

NEW_TOKEN = "EAAnew-token-for-the-account"


def paused_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("account.paused")
    ]


def assert_waiting(services: Services, attempts: int = 0, code: int | None = 190) -> None:
    for row in conversions(services):
        assert row.status == Conversion.PENDING
        assert row.attempts == attempts
        assert row.last_error is not None and row.last_error.startswith("held: account paused")
        assert row.last_error_code == code


def test_revoked_token_pauses_once_and_resumes_when_the_token_works_again(
    freezer: FrozenDateTimeFactory,
    ready: Services,
    fake_graph: FakeGraph,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ids = enqueue_many(ready, 5)
    fake_graph.valid_tokens.discard(ACCESS_TOKEN)  # revoked at Meta

    stats = Dispatcher(ready).run_once()

    assert stats.paused_accounts == [WABA_ID]
    assert (stats.sent, stats.held, stats.requests) == (0, 5, 1)
    paused = account(ready)
    assert paused.status == Account.PAUSED
    assert paused.status_reason is not None
    assert "waconv accounts set-token" in paused.status_reason
    assert "190" in paused.status_reason
    assert_waiting(ready)
    assert ACCESS_TOKEN not in caplog.text

    # Several more runs before the probe time: nothing is sent, nobody is told again.
    for _ in range(3):
        freezer.tick(timedelta(minutes=1))
        assert Dispatcher(ready).run_once().requests == 0
    assert len(fake_graph.events_requests()) == 1
    assert_waiting(ready)
    assert len(paused_logs(caplog)) == 1

    # Probe time, token still revoked: one event is tried, the attempt not counted, no new log.
    freezer.tick(PAUSED_PROBE_INTERVAL)
    stats = Dispatcher(ready).run_once()
    assert stats.requests == 1
    assert fake_graph.batch_sizes()[-1] == 1
    assert account(ready).status == Account.PAUSED
    assert_waiting(ready)
    assert len(paused_logs(caplog)) == 1

    # Meta accepts the token again; after the probe interval everything goes.
    fake_graph.valid_tokens.add(ACCESS_TOKEN)
    freezer.tick(PAUSED_PROBE_INTERVAL)
    stats = Dispatcher(ready).run_once()

    assert stats.sent == 5
    assert account(ready).status == Account.ACTIVE
    assert account(ready).status_reason is None
    assert set(fake_graph.accepted_event_ids()) == set(ids)
    assert set(fake_graph.accepted_event_ids().values()) == {1}
    for row in conversions(ready):
        assert (row.status, row.attempts, row.last_error) == (Conversion.SENT, 1, None)
    assert len(paused_logs(caplog)) == 1
    assert any(r.getMessage().startswith("account.resumed") for r in caplog.records)


def test_set_token_resumes_at_once(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 3)
    fake_graph.valid_tokens = {NEW_TOKEN}
    Dispatcher(ready).run_once()
    assert account(ready).status == Account.PAUSED

    service.set_token(ready, WABA_ID, NEW_TOKEN)  # no waiting for the probe
    stats = Dispatcher(ready).run_once()

    assert stats.sent == 3
    assert account(ready).status == Account.ACTIVE
    [_, accepted] = fake_graph.events_requests()
    assert accepted["headers"]["Authorization"] == f"Bearer {NEW_TOKEN}"
    assert set(fake_graph.accepted_event_ids()) == set(ids)


ACCOUNT_FAULTS: list[tuple[str, dict[str, Any], int]] = [
    ("token", {}, 190),
    ("permission", {}, 200),
    ("error", {"code": 10}, 10),
    ("error", {"code": 100, "subcode": 33}, 100),  # wrong dataset, or no access to it
    ("error", {"code": 100, "subcode": 2804132}, 100),  # dataset not linked to the WABA
]


@pytest.mark.parametrize(
    ("kind", "options", "code"),
    ACCOUNT_FAULTS,
    ids=[f"{k}-{o.get('code', '')}-{o.get('subcode', '')}" for k, o, _ in ACCOUNT_FAULTS],
)
def test_account_faults_pause_without_counting_an_attempt(
    freezer: FrozenDateTimeFactory,
    ready: Services,
    fake_graph: FakeGraph,
    kind: str,
    options: dict[str, Any],
    code: int,
) -> None:
    enqueue_many(ready, 4)
    fake_graph.fail_next(1, kind, **options)

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed, stats.retried, stats.held) == (0, 0, 0, 4)
    assert account(ready).status == Account.PAUSED
    assert_waiting(ready, code=code)
    freezer.tick(PAUSED_PROBE_INTERVAL)
    assert Dispatcher(ready).run_once().sent == 4
    assert account(ready).status == Account.ACTIVE


class RevokeAfter(GraphClient):
    """Meta revokes the token just before the ``n``-th events request."""

    def __init__(self, fake: FakeGraph, n: int) -> None:
        super().__init__(fake.url, "v26.0", timeout=5)
        self.fake, self.n, self.calls = fake, n, 0

    def send_events(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.n:
            self.fake.valid_tokens.clear()
        return super().send_events(*args, **kwargs)


def test_token_revoked_in_the_middle_of_a_split(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 8)
    fake_graph.invalid_clids.add("ARclid-evt-000007")
    graph = RevokeAfter(fake_graph, 3)

    stats = Dispatcher(ready, graph=graph).run_once()
    graph.close()

    # 8 rejected (invalid) -> 0..3 sent -> 4..7 refused for the token: the account pauses.
    assert fake_graph.batch_sizes() == [8, 4, 4]
    assert stats.sent == 4 and stats.held == 4 and stats.paused_accounts == [WABA_ID]
    rows = {r.event_id: r for r in conversions(ready)}
    assert {rows[e].status for e in ids[:4]} == {Conversion.SENT}
    for eid in ids[4:]:
        assert (rows[eid].status, rows[eid].attempts) == (Conversion.PENDING, 0)
    assert account(ready).status == Account.PAUSED


def test_no_token_holds_events_with_the_command_to_run(
    freezer: FrozenDateTimeFactory, make_app: Callable[..., Flask], fake_graph: FakeGraph
) -> None:
    app = make_app(access_token="")
    services: Services = app.extensions["waconv"]
    setup_account(services)
    ids = enqueue_many(services, 3)
    now = utcnow()

    stats = Dispatcher(services).run_once()

    assert (stats.held, stats.requests) == (3, 0)
    assert not fake_graph.requests
    for row in conversions(services):
        assert row.status == Conversion.PENDING
        assert row.attempts == 0
        assert row.next_attempt_at == now + HOLD_DELAY
        assert row.last_error is not None
        assert f"waconv accounts set-token --waba-id {WABA_ID}" in row.last_error
        assert "WACONV_ACCESS_TOKEN" in row.last_error
    # Held events do not spin the loop: the next run finds nothing due.
    assert Dispatcher(services).run_once().moved == 0

    service.set_token(services, WABA_ID, ACCESS_TOKEN)  # releases the held events
    assert Dispatcher(services).run_once().sent == 3
    assert set(fake_graph.accepted_event_ids()) == set(ids)


def test_unreadable_stored_token_holds_only_that_account(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    broken_waba = "200000000000002"
    setup_account(ready, broken_waba, "300000000000002")
    with ready.db.transaction() as session:
        broken = session.get(Account, account(ready, broken_waba).id)
        assert broken is not None
        broken.access_token_encrypted = "garbage"
    enqueue_many(ready, 2, prefix="broken", waba_id=broken_waba)
    good = enqueue_many(ready, 2)

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.held) == (2, 2)
    assert set(fake_graph.accepted_event_ids()) == set(good)
    held = conversions(ready, Conversion.waba_id == broken_waba)
    for row in held:
        assert row.status == Conversion.PENDING
        assert row.last_error is not None and row.last_error.startswith("held: cannot read")
        assert "WACONV_SECRET_KEY" in row.last_error


class NoConnectionDuringCalls(GraphClient):
    """Asserts that no database connection is checked out while a Graph call is made."""

    def __init__(self, fake: FakeGraph, services: Services) -> None:
        super().__init__(fake.url, "v26.0", timeout=5)
        self.services = services
        self.checked: list[str] = []

    def _check(self, what: str) -> None:
        pool: Any = self.services.db.engine.pool
        assert pool.checkedout() == 0, f"a transaction is open during {what}"
        self.checked.append(what)

    def create_dataset(self, *args: Any, **kwargs: Any) -> str:
        self._check("create_dataset")
        return super().create_dataset(*args, **kwargs)

    def send_events(self, *args: Any, **kwargs: Any) -> Any:
        self._check("send_events")
        return super().send_events(*args, **kwargs)


def test_an_account_without_a_dataset_gets_one_provisioned(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    setup_account(services, dataset_id=None)
    ids = enqueue_many(services, 3)
    graph = NoConnectionDuringCalls(fake_graph, services)

    stats = Dispatcher(services, graph=graph).run_once()
    graph.close()

    expected = dataset_id_for(WABA_ID)
    assert graph.checked == ["create_dataset", "send_events"]
    assert stats.sent == 3
    assert account(services).dataset_id == expected
    assert {r.dataset_id for r in conversions(services)} == {expected}
    assert fake_graph.events_requests()[0]["path"] == f"/v26.0/{expected}/events"
    assert set(fake_graph.accepted_event_ids()) == set(ids)


def test_failed_provisioning_holds_events_and_is_tried_again_hourly(
    freezer: FrozenDateTimeFactory,
    services: Services,
    fake_graph: FakeGraph,
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup_account(services, dataset_id=None)
    enqueue_many(services, 2)
    fake_graph.tokens_without_permission.add(ACCESS_TOKEN)

    stats = Dispatcher(services).run_once()

    assert stats.held == 2
    assert account(services).dataset_provision_tried_at is not None
    for row in conversions(services):
        assert row.status == Conversion.PENDING and row.attempts == 0
        assert row.last_error is not None
        assert f"waconv provision-dataset --waba-id {WABA_ID}" in row.last_error
    assert [r.getMessage().split()[0] for r in caplog.records if r.levelno >= logging.ERROR] == [
        "account.provision_failed"
    ]
    freezer.tick(HOLD_DELAY)
    Dispatcher(services).run_once()
    dataset_calls = [r for r in fake_graph.requests if r["kind"] == "dataset"]
    assert len(dataset_calls) == 1  # not again on every pass

    fake_graph.tokens_without_permission.clear()
    freezer.tick(PROVISION_RETRY)  # a later automatic try succeeds once the cause is gone
    assert Dispatcher(services).run_once().sent == 2
    assert len([r for r in fake_graph.requests if r["kind"] == "dataset"]) == 2


def test_held_events_go_once_the_operator_provisions(
    freezer: FrozenDateTimeFactory, services: Services, fake_graph: FakeGraph
) -> None:
    setup_account(services, dataset_id=None)
    enqueue_many(services, 2)
    fake_graph.tokens_without_permission.add(ACCESS_TOKEN)
    assert Dispatcher(services).run_once().held == 2
    fake_graph.tokens_without_permission.clear()
    service.provision_dataset(services, WABA_ID)  # what the held events' message says to run
    assert Dispatcher(services).run_once().sent == 2


def test_no_transaction_is_open_during_a_send(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    enqueue_many(ready, 5)
    fake_graph.invalid_clids.add("ARclid-evt-000002")  # splits: several calls under one claim
    graph = NoConnectionDuringCalls(fake_graph, ready)

    Dispatcher(ready, graph=graph).run_once()
    graph.close()

    assert len(graph.checked) > 3
    assert set(graph.checked) == {"send_events"}


def pause_account(services: Services, fake: FakeGraph) -> None:
    fake.valid_tokens.discard(ACCESS_TOKEN)
    Dispatcher(services).run_once()
    assert account(services).status == Account.PAUSED
    fake.valid_tokens.add(ACCESS_TOKEN)
    fake.reset()


def test_a_probe_meta_cannot_answer_waits_for_the_next_probe(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """Meta has a 5xx on the probe: one event is tried, not every event one by one."""
    enqueue_many(ready, 5)
    pause_account(ready, fake_graph)
    freezer.tick(PAUSED_PROBE_INTERVAL)
    fake_graph.fail_next(1, "http500")

    stats = Dispatcher(ready).run_once()

    assert (stats.requests, stats.retried) == (1, 1)
    paused = account(ready)
    assert paused.status == Account.PAUSED
    assert paused.probe_at == utcnow() + PAUSED_PROBE_INTERVAL
    freezer.tick(PAUSED_PROBE_INTERVAL)
    assert Dispatcher(ready).run_once().sent == 5
    assert account(ready).status == Account.ACTIVE


def test_a_probe_meta_rejects_as_invalid_resumes_the_account(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """A 100 on the probe event means Meta read it: the token works; the event alone fails."""
    ids = enqueue_many(ready, 4)
    pause_account(ready, fake_graph)
    with ready.db.transaction() as session:  # this one is probed first
        probe = session.scalar(select(Conversion).where(Conversion.event_id == ids[2]))
        assert probe is not None
        probe.next_attempt_at -= timedelta(seconds=1)
    fake_graph.invalid_clids.add("ARclid-evt-000002")
    freezer.tick(PAUSED_PROBE_INTERVAL)

    stats = Dispatcher(ready).run_once()

    assert (stats.failed, stats.sent) == (1, 3)
    assert account(ready).status == Account.ACTIVE
    assert fake_graph.batch_sizes() == [1, 3]


def test_one_accounts_crash_does_not_starve_the_others(
    freezer: FrozenDateTimeFactory,
    ready: Services,
    fake_graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crashing = "100000000000009"
    setup_account(ready, crashing, "300000000000009")
    enqueue_many(ready, 2, prefix="crash", waba_id=crashing)
    good = enqueue_many(ready, 3)
    dispatcher = Dispatcher(ready)
    real = dispatcher._dispatch_account

    def dispatch_account(waba_id: str) -> Any:
        if waba_id == crashing:
            raise RuntimeError("unexpected")
        return real(waba_id)

    monkeypatch.setattr(dispatcher, "_dispatch_account", dispatch_account)

    with pytest.raises(RuntimeError, match="unexpected"):  # the run reports it was incomplete
        dispatcher.run_once()

    assert set(fake_graph.accepted_event_ids()) == set(good)
    assert {r.status for r in conversions(ready, Conversion.waba_id == crashing)} == {
        Conversion.PENDING
    }


def test_an_app_that_requires_appsecret_proof_pauses_the_account_instead_of_failing_events(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    # Meta answers 100 naming a parameter of the request: split down, every event would have
    # failed alone (2N - 1 requests, N events to retry by hand) for a configuration mistake.
    enqueue_many(ready, 6)
    fake_graph.app_secret = "the-app-requires-a-proof"

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed, stats.held, stats.requests) == (0, 0, 6, 1)
    assert account(ready).status == Account.PAUSED
    assert_waiting(ready, code=100)
    (row, *_) = conversions(ready)
    assert row.last_error is not None and "WACONV_APPSECRET_PROOF" in row.last_error
