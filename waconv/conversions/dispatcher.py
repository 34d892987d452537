"""The dispatcher: drains the outbox to each account's dataset, in batches.

One dispatcher at a time sends an account's events: it holds the account's lease
(``accounts.dispatch_token`` until ``dispatch_leased_until``), taken at the start of the
account's turn, extended before any request the lease would not outlast, and given back at
the end of the turn. Its events need no lease of their own, so a batch costs the database one
read and one write:

1. claim: read up to ``MAX_BATCH`` due events, oldest due first (within a turn, after the
   previous claim's last: those are in flight or recorded);
2. send, with no transaction open;
3. record the outcome (short transaction) on the rows still ``pending``; ``attempts`` counts
   the attempts whose outcome was recorded (Meta's answer, or a network failure), not one cut
   short by a dispatcher's death nor one refused for an account problem.

Several dispatchers share the accounts; a dispatcher that dies loses its accounts when their
lease lapses (``WACONV_LEASE_SECONDS``), and their events, still ``pending``, go again under the
same event_ids. (One lease per event, the 0.2 design, made every batch two writes of 1,000 rows
instead of one: bench/PROFILE.md.)

An account with more due events than one batch gets its batches back to back, pipelined: while
batch k is on the wire (a sender thread; the GIL is free while it waits for Meta), this thread
records batch k-1 and claims and builds batch k+1. One request at a time is in flight, and a
batch whose request failed is dealt with (split, backed off, account paused) before the next
one goes out, so a failure never touches another batch's rows.

A batch Meta rejects for an invalid event is split in halves, and each half sent, until the bad
events stand alone: they fail with Meta's words, the others go out in the same pass. A
retryable failure backs off (doubling, jitter, 15-minute cap) but never past the 7-day limit:
such an event expires with the reason. An account problem (token, permission, dataset) pauses
that account: its events wait, untouched (their attempt not counted), until the token is fixed;
every 5 minutes one event probes whether Meta accepts the account again. Events of an account
with no usable token or dataset are held with a ``last_error`` naming the command to run.

No event older than Meta's limit is ever sent: claims skip them, every request of a split drops
the ones that aged meanwhile, and a periodic sweep marks them ``expired`` (in accounts no other
dispatcher holds; one held at a dispatcher's sweep is swept by that dispatcher when it next
holds it). A dispatcher whose lease ran out (stalled in a long split) sends nothing
more of that account: another dispatcher owns its events now.

Where events go is a destination's business (waconv.conversions.destinations); an account
with a Conversions API Gateway has its outcomes recorded per destination (conversion_deliveries)
and takes the unpipelined ``_routed_turn``. The SQL lives in waconv.conversions.queue, the
retry schedule in waconv.conversions.schedule, the account lease in waconv.conversions.lease,
whether an account can send (credentials, dataset) in waconv.conversions.readiness, and Meta's
rate limits in waconv.conversions.throttle: this module orchestrates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from waconv.accounts import registry
from waconv.accounts.registry import PAUSED_PROBE_INTERVAL, Credentials
from waconv.clock import utcnow
from waconv.conversions import lease as leases
from waconv.conversions import queue, readiness, throttle
from waconv.conversions.destinations import (
    GATEWAY,
    GRAPH,
    Destination,
    GatewayDestination,
    GraphDestination,
    Receipt,
    Refusal,
    Routing,
)
from waconv.conversions.events import build_meta_event
from waconv.conversions.held import held
from waconv.conversions.lease import LEASE, LEASE_SLACK, AccountLease
from waconv.conversions.queue import (
    STALE_REASON,
    UNSETTLED,
    Row,
    delivery_in,
    id_in,
    is_due,
    lease_free,
    rowcount,
)
from waconv.conversions.readiness import HOLD_DELAY, PROVISION_RETRY
from waconv.conversions.requestlog import RequestRecord, record_request
from waconv.conversions.schedule import MAX_BACKOFF, SEND_MARGIN, backoff, send_limit, unix_limit
from waconv.conversions.throttle import Throttle
from waconv.graph.client import GraphClient
from waconv.graph.errors import Disposition
from waconv.metrics import CONVERSION_EVENTS, GRAPH_REQUESTS
from waconv.models import Account, Conversion, ConversionDelivery
from waconv.services import Services

__all__ = [
    "HOLD_DELAY",
    "LEASE",
    "MAX_BACKOFF",
    "PROVISION_RETRY",
    "SEND_MARGIN",
    "AccountLease",
    "Claimed",
    "DispatchStats",
    "Dispatcher",
    "backoff",
]

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # Meta rejects requests with more events
IDLE_POLL_SECONDS = 1.0  # the contract: idle, look for due events at least once a second
# The sweep that marks stale events `expired` scans every due event; claims skip stale events
# anyway, so the sweep runs in the first step of each run_once and then at most this often.
EXPIRE_SWEEP_SECONDS = 10.0
# One account's turn of back-to-back batches within a step: then the other accounts get theirs,
# and a stop request or a run's deadline is seen at least this often.
ACCOUNT_TURN_SECONDS = 1.0


@dataclass
class DispatchStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    held: int = 0
    requests: int = 0
    paused_accounts: list[str] = field(default_factory=list)
    # Exceptions of accounts whose step failed (logged; the other accounts went on).
    errors: list[Exception] = field(default_factory=list)

    def add(self, other: DispatchStats) -> None:
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.expired += other.expired
        self.held += other.held
        self.requests += other.requests
        self.paused_accounts.extend(other.paused_accounts)
        self.errors.extend(other.errors)

    @property
    def moved(self) -> int:
        return self.sent + self.retried + self.failed + self.expired + self.held


@dataclass
class Claimed:
    """One claim: the account lease it was read under, its rows and their Meta events, and
    the destination they go to."""

    lease: AccountLease
    rows: list[Row]
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    destination: Destination | None = None
    # The outcome is recorded per destination (conversion_deliveries), not on the conversion.
    tracked: bool = False
    # Due events may remain after these (the claim was full, or stopped at the byte cap).
    more: bool = False

    def to(self, destination: Destination) -> Claimed:
        """The same claim, for ``destination``, recorded per destination."""
        return Claimed(self.lease, self.rows, self.events, destination, True, self.more)

    @property
    def at(self) -> str | None:
        """The destination whose delivery state an outcome goes to (None: the conversion's)."""
        return self.destination.name if self.tracked and self.destination else None

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]

    @property
    def last(self) -> tuple[Any, int] | None:
        """Where the next claim of the turn starts (rows come in ``next_attempt_at, id``
        order)."""
        if not self.rows:
            return None
        return self.rows[-1].due, self.rows[-1].id


def _endpoint(claimed: Claimed) -> str:
    """The requests metric's endpoint label of where ``claimed`` goes."""
    destination = claimed.destination.name if claimed.destination else GRAPH
    return "events" if destination == GRAPH else "gateway_events"


# Fields of a conversion's outcome that belong to one destination's delivery; the others
# (Meta's error code, the dataset) stay on the conversion.
_DELIVERY_FIELDS = frozenset({"status", "attempts", "next_attempt_at", "last_error"})
_DELIVERY_SETTLED = (ConversionDelivery.SENT, ConversionDelivery.FAILED, ConversionDelivery.EXPIRED)


def _conversion_values(
    deliveries: Sequence[tuple[str, str, int, datetime, str | None]], now: datetime
) -> dict[str, Any]:
    """A conversion's schedule and fate from its deliveries (destination, status, attempts,
    next_attempt_at, last_error): sent when every destination has it, failed when one failed
    (once none is pending), else pending until the earliest destination's next attempt."""
    statuses = {status for _, status, _, _, _ in deliveries}
    attempts = max(tries for _, _, tries, _, _ in deliveries)
    errors = [f"{name}: {error}" for name, status, _, _, error in deliveries if error]
    last_error = "; ".join(errors) or None
    if statuses == {ConversionDelivery.SENT}:
        return {"status": Conversion.SENT, "sent_at": now, "attempts": attempts, "last_error": None}
    if ConversionDelivery.PENDING in statuses:
        due = min(at for _, status, _, at, _ in deliveries if status == ConversionDelivery.PENDING)
        return {"next_attempt_at": due, "attempts": attempts, "last_error": last_error}
    fate = Conversion.FAILED if ConversionDelivery.FAILED in statuses else Conversion.EXPIRED
    return {"status": fate, "attempts": attempts, "last_error": last_error}


def _counted(count: int, outcome: str) -> int:
    """``count`` events recorded with ``outcome``, added to the metric."""
    if count:
        CONVERSION_EVENTS.labels(outcome=outcome).inc(count)
    return count


class Dispatcher:
    def __init__(
        self,
        services: Services,
        *,
        graph: GraphClient | None = None,
        batch_size: int = MAX_BATCH,
        concurrency: int | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self.destinations: dict[str, Destination] = {GATEWAY: GatewayDestination(services)}
        self.graph = graph or services.graph
        self.batch_size = batch_size
        # Accounts whose turns run at once (WACONV_DISPATCH_CONCURRENCY).
        self.concurrency = concurrency or self.settings.dispatch_concurrency
        self.lease = timedelta(seconds=self.settings.lease_seconds)
        self._swept_at: float | None = None  # time.monotonic() of the last expiry sweep
        # Accounts another dispatcher held at this one's last sweep: swept when next leased.
        self._unswept: set[str] = set()
        self._stop: threading.Event | None = None  # run_forever's stop request
        self._deadline: float | None = None  # run_once's max_seconds, in time.monotonic()
        # The app's rate limit, as this dispatcher last recorded it: turns in flight stop
        # (the accounts' rows say it to every dispatcher's next step).
        self._app_throttled_until: datetime | None = None

    @property
    def graph(self) -> GraphClient:
        return self._graph

    @graph.setter
    def graph(self, client: GraphClient) -> None:
        self._graph = client
        test_event_code = self.settings.test_event_code
        self.destinations[GRAPH] = GraphDestination(client, test_event_code=test_event_code)

    # -- the loop -----------------------------------------------------------------------------

    def run_once(self, *, max_seconds: float | None = None) -> DispatchStats:
        """Send everything due now, then return. Every drain has a deadline."""
        deadline = time.monotonic() + max_seconds if max_seconds is not None else None
        total = DispatchStats()
        self._swept_at = None  # what became stale since the last run expires now
        self._deadline = deadline
        try:
            while True:
                step = self.step()
                total.add(step)
                if step.moved == 0 or (deadline is not None and time.monotonic() > deadline):
                    if total.errors:  # logged already; the caller learns the run was incomplete
                        raise total.errors[0]
                    return total
        finally:
            self._deadline = None

    def run_forever(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; the batch in flight is always finished first."""
        log.info("dispatcher.started")
        self._stop = stop  # an account's turn of batches ends early when it is set
        try:
            while not stop.is_set():
                try:
                    step = self.step()
                except Exception:
                    log.exception("dispatcher.step_failed; trying again shortly")
                    stop.wait(IDLE_POLL_SECONDS)
                    continue
                if step.moved == 0:
                    stop.wait(IDLE_POLL_SECONDS)
        finally:
            self._stop = None
        log.info("dispatcher.stopped")

    def step(self) -> DispatchStats:
        """One pass: each account with due events gets its turn, then what can no longer be
        sent expires. The sweep scans every due event, so it comes after the turns, when
        only what could not be sent is left (claims skip stale events meanwhile)."""
        stats = DispatchStats()
        accounts = self._accounts_with_due_events()
        workers = min(self.concurrency, len(accounts))
        if workers <= 1:
            for waba_id in accounts:
                stats.add(self._turn(waba_id))
        else:
            # Up to `concurrency` account turns at once, each under its own lease: while one
            # waits for Meta the others send (the GIL is free during the wait).
            with ThreadPoolExecutor(workers, thread_name_prefix="dispatcher-account") as pool:
                for turn in pool.map(self._turn, accounts):
                    stats.add(turn)
        clock = time.monotonic()
        if self._swept_at is None or clock - self._swept_at >= EXPIRE_SWEEP_SECONDS:
            stats.expired += self._expire_stale()
            self._swept_at = clock
        return stats

    def _turn(self, waba_id: str) -> DispatchStats:
        """One account's turn; its failure is logged and counted, never raised (one account's
        trouble must not starve the others). Nothing once run_forever is asked to stop."""
        if self._stopping() or self._app_throttled():
            return DispatchStats()
        try:
            return self._dispatch_account(waba_id)
        except Exception as exc:
            log.exception("dispatcher.account_failed waba_id=%s", waba_id)
            return DispatchStats(errors=[exc])

    # -- state changes --------------------------------------------------------------------------

    def _expire_stale(self, lease: AccountLease | None = None) -> int:
        """Mark expired the pending events too old to send, due or waiting (held, backing
        off: their next attempt could not be sent either): of every account no dispatcher holds
        (an event of a batch in flight may be just this side of the limit), or, with
        ``lease``, of the account this dispatcher holds, before its first claim of a turn
        (accounts that dispatchers take in turn might never be free at anyone's sweep)."""
        now = utcnow()
        which: Any
        with self.db.transaction() as session:
            if lease is None:
                held = list(session.scalars(select(Account.waba_id).where(~lease_free(now))))
                self._unswept.update(held)
                which = Conversion.waba_id.not_in(held)
            else:
                self._unswept.discard(lease.waba_id)
                which = Conversion.waba_id == lease.waba_id
            result = session.execute(
                update(Conversion)
                .where(
                    Conversion.status == Conversion.PENDING,
                    Conversion.event_time < send_limit(now),
                    which,
                )
                .values(status=Conversion.EXPIRED, last_error=STALE_REASON)
                .execution_options(synchronize_session=False)
            )
        expired = _counted(rowcount(result), "expired")
        if expired:
            log.warning("conversion.expired count=%s reason=7-day limit", expired)
        return expired

    def _accounts_with_due_events(self) -> list[str]:
        # EXISTS per account: an index probe each, not a scan of every due event.
        now = utcnow()
        pending = exists().where(Conversion.waba_id == Account.waba_id, is_due(now))
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(Account.waba_id)
                    .where(
                        or_(Account.status == Account.ACTIVE, Account.probe_at <= now),
                        lease_free(now),
                        throttle.unthrottled(now),
                        pending,
                    )
                    .order_by(Account.waba_id)
                )
            )

    def _dispatch_account(self, waba_id: str) -> DispatchStats:
        """The account's turn, under its lease (nothing, if another dispatcher holds it)."""
        stats = DispatchStats()
        with self.db.transaction() as session:
            lease = self._take_lease(session, waba_id)
        if lease is None:
            return stats
        try:
            self._account_turn(lease, stats)
        finally:
            leases.give_back(self.db, lease)
        return stats

    def _take_lease(self, session: Session, waba_id: str) -> AccountLease | None:
        return leases.take(session, waba_id, self.lease)

    def _account_turn(self, lease: AccountLease, stats: DispatchStats) -> None:
        waba_id = lease.waba_id
        if waba_id in self._unswept:
            stats.expired += self._expire_stale(lease)
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is None:
                return
            ready = readiness.check(account, self.settings)
            if ready.problem is not None:
                stats.held = readiness.hold(session, waba_id, ready.problem)
                return
        creds, probing = ready.creds, ready.probing
        assert creds is not None
        if ready.provision:
            # The Graph call happens with no transaction open (SQLite would hold its write lock).
            creds = readiness.provision(self.services, creds, self.graph)
            if creds.dataset_id is None:
                with self.db.transaction() as session:
                    stats.held = readiness.hold(session, waba_id, readiness.no_dataset(waba_id))
                return
        if not creds.routing.graph_only:
            self._routed_turn(creds, lease, stats, probing=probing)
            return
        claimed = self._claim(lease, 1 if probing else self.batch_size)
        if not claimed.rows:
            return
        rows = self._build_events(creds, claimed, stats)
        if probing or not claimed.more:  # nothing more to pipeline
            if rows:
                self._deliver(creds, claimed, rows, stats, probing=probing)
            return
        self._pipeline(creds, claimed, rows, stats)

    # -- accounts with more destinations than the Graph API -----------------------------------

    def _routed_turn(
        self, creds: Credentials, lease: AccountLease, stats: DispatchStats, *, probing: bool
    ) -> None:
        """The turn of an account whose events go to a Gateway: batch after batch, each sent to
        every destination that still needs it (no pipelining: Graph-only accounts have it)."""
        turn_ends = time.monotonic() + ACCOUNT_TURN_SECONDS
        limit = 1 if probing else self.batch_size
        after: tuple[Any, int] | None = None
        while True:
            claimed = self._claim(lease, limit, after=after)
            if not claimed.rows:
                return
            rows = self._build_events(creds, claimed, stats)
            if not self._deliver_routed(creds, claimed, rows, stats, probing=probing):
                return
            if probing or not claimed.more or not self._more_batches(lease, turn_ends):
                return
            after = claimed.last

    def _deliver_routed(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        stats: DispatchStats,
        *,
        probing: bool,
    ) -> bool:
        """Send ``rows`` to each destination due to get them; False when the account must
        stop. The Gateway goes first: a Graph account problem then holds only Graph's part."""
        due = self._due_deliveries(creds.routing, rows)
        for name in (GATEWAY, GRAPH):
            if due.get(name) and not self._deliver(
                creds,
                claimed.to(self.destinations[name]),
                due[name],
                stats,
                probing=probing and name == GRAPH,
            ):
                return False
        return True

    def _due_deliveries(self, routing: Routing, rows: Sequence[Row]) -> dict[str, list[Row]]:
        """Each destination's ``rows`` due now, their delivery rows made where missing.

        A pending conversion whose deliveries are all settled was queued again by an operator
        (``retry``): its failed destinations are due again. One with nothing due gets its
        schedule back from its deliveries (its account was held or paused meanwhile)."""
        now = utcnow()
        ids = [r.id for r in rows]
        due: dict[str, list[Row]] = {}
        idle: list[int] = []
        with self.db.transaction() as session:
            known: dict[int, dict[str, tuple[str, datetime]]] = {}
            for cid, name, status, at in session.execute(
                select(
                    ConversionDelivery.conversion_id,
                    ConversionDelivery.destination,
                    ConversionDelivery.status,
                    ConversionDelivery.next_attempt_at,
                ).where(delivery_in(ids, self.db.dialect))
            ):
                known.setdefault(cid, {})[name] = (status, at)
            missing: list[tuple[int, str]] = []
            again: list[int] = []
            for r in rows:
                states = known.get(r.id, {})
                targets = routing.targets(r.event_name)
                if states and all(states.get(n, ("",))[0] in _DELIVERY_SETTLED for n in targets):
                    failed = [n for n in targets if states[n][0] == ConversionDelivery.FAILED]
                    if failed:
                        again.append(r.id)
                        states = {
                            **states,
                            **{n: (ConversionDelivery.PENDING, now) for n in failed},
                        }
                sent_now = False
                for name in targets:
                    if name not in states:
                        missing.append((r.id, name))
                        states = {**states, name: (ConversionDelivery.PENDING, now)}
                    status, at = states[name]
                    if status == ConversionDelivery.PENDING and at <= now:
                        due.setdefault(name, []).append(r)
                        sent_now = True
                if not sent_now:
                    idle.append(r.id)
            if missing:
                queue.insert_deliveries(session, missing, now)
            if again:
                session.execute(
                    update(ConversionDelivery)
                    .where(
                        delivery_in(again, self.db.dialect),
                        ConversionDelivery.status == ConversionDelivery.FAILED,
                    )
                    .values(status=ConversionDelivery.PENDING, next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
            if idle:
                self._sync_conversions(session, idle, {})
        return due

    def _finalize_at(
        self, at: str, rows: Sequence[Row], values: dict[str, Any], outcome: str
    ) -> int:
        """``_finalize`` for one destination: its delivery rows still pending get the outcome,
        and their conversions the state all their deliveries add up to, in one transaction."""
        ids = [r.id for r in rows]
        now = utcnow()
        delivery: dict[str, Any] = {
            name: value for name, value in values.items() if name in _DELIVERY_FIELDS
        }
        if "attempts" in delivery:
            delivery["attempts"] = ConversionDelivery.attempts + 1
        if values.get("status") == Conversion.SENT:
            delivery.update(attempts=ConversionDelivery.attempts + 1, sent_at=now, last_error=None)
        delivery["updated_at"] = now
        rest = {name: value for name, value in values.items() if name not in _DELIVERY_FIELDS}
        with self.db.transaction() as session:
            result = session.execute(
                update(ConversionDelivery)
                .where(
                    delivery_in(ids, self.db.dialect),
                    ConversionDelivery.destination == at,
                    ConversionDelivery.status == ConversionDelivery.PENDING,
                )
                .values(**delivery)
                .execution_options(synchronize_session=False)
            )
            self._sync_conversions(session, ids, rest)
        return _counted(rowcount(result), outcome)

    def _sync_conversions(
        self, session: Session, ids: Sequence[int], values: dict[str, Any]
    ) -> None:
        """Give the conversions ``ids`` (still pending) the state of their deliveries, and
        ``values``."""
        now = utcnow()
        found: dict[int, list[tuple[str, str, int, datetime, str | None]]] = {}
        for cid, name, status, tries, at, error in session.execute(
            select(
                ConversionDelivery.conversion_id,
                ConversionDelivery.destination,
                ConversionDelivery.status,
                ConversionDelivery.attempts,
                ConversionDelivery.next_attempt_at,
                ConversionDelivery.last_error,
            ).where(delivery_in(ids, self.db.dialect))
        ):
            found.setdefault(cid, []).append((name, status, tries, at, error))
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for cid, deliveries in found.items():
            state = {**values, **_conversion_values(deliveries, now)}
            groups.setdefault(tuple(sorted(state.items())), []).append(cid)
        for state_items, group in groups.items():
            session.execute(
                update(Conversion)
                .where(id_in(group, self.db.dialect), UNSETTLED)
                .values(dict(state_items))
                .execution_options(synchronize_session=False)
            )

    def _more_batches(self, lease: AccountLease, turn_ends: float) -> bool:
        """Whether this account's turn may claim another batch."""
        if lease.lost or lease.throttled or self._app_throttled():
            return False
        now = time.monotonic()
        if now >= turn_ends or (self._deadline is not None and now > self._deadline):
            return False
        return not self._stopping()

    def _stopping(self) -> bool:
        """run_forever was asked to stop."""
        return self._stop is not None and self._stop.is_set()

    def _pipeline(
        self, creds: Credentials, claimed: Claimed, rows: list[Row], stats: DispatchStats
    ) -> None:
        """Send the account's batches back to back, starting with ``claimed`` (built).

        Three threads, each on its own part of a batch: the sender posts batch k+1 while the
        recorder marks batch k sent (its one write) and this thread claims and builds batch
        k+2 (a read: on SQLite it needs no write lock, on PostgreSQL nothing waits for it).
        This thread waits for each answer and deals with a failure before anything else goes
        out (a split sends from this thread, nothing else being in flight). A request is only
        ever waited for, never abandoned: if this thread fails, the request in flight is
        awaited and recorded before the exception leaves. A claimed batch that never went out
        stays pending: it was only read.
        """
        turn_ends = time.monotonic() + ACCOUNT_TURN_SECONDS
        lease = claimed.lease
        after = claimed.last
        queued: tuple[Claimed, list[Row]] | None = (claimed, rows)  # claimed, built, unsent
        flying: tuple[Claimed, list[Row], Future[Receipt]] | None = None
        recording: Future[int] | None = None  # the last batch Meta took, being marked sent
        more = True  # the last claim was full: more may be due
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-send") as sender,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-record") as recorder,
        ):
            try:
                while queued is not None or flying is not None:
                    answered: list[Row] | None = None  # Meta took them
                    if flying is not None:
                        sent_claim, sent_rows, future = flying
                        flying = None
                        try:
                            receipt = future.result()
                        except Refusal as err:
                            if not self._rejected(creds, sent_claim, sent_rows, err, stats):
                                if queued is not None and not lease.throttled:
                                    # The account paused: they wait too (throttled, the
                                    # queued batch, only read, waits as it is).
                                    self._record_account_problem(queued[0], err, creds, stats)
                                return
                        else:
                            answered = sent_rows
                            if receipt.throttle is not None:  # the rest of the turn waits
                                self._throttle(lease, receipt.throttle)
                                queued, more = None, False
                    if queued is not None and self._stopping():
                        # Stopping: the batch in flight was the last. This one was only
                        # read; it stays pending for the next dispatcher.
                        queued = None
                    if queued is not None:
                        next_claim, next_rows = queued
                        queued = None
                        next_rows = self._sendable(next_claim, next_rows, stats)
                        if next_rows:
                            stats.requests += 1
                            future = sender.submit(self._post, creds, next_claim, next_rows)
                            flying = (next_claim, next_rows, future)
                    if answered is not None:
                        # The new record is queued before the last one's outcome is read: if
                        # that one failed, this one is still made (in ``finally``).
                        previous = recording
                        recording = recorder.submit(
                            self._record_accepted, sent_claim, answered, creds, receipt
                        )
                        if previous is not None:
                            stats.sent += previous.result()
                    if more and self._more_batches(lease, turn_ends):
                        fresh = self._claim(lease, self.batch_size, after=after)
                        more = fresh.more
                        if fresh.rows:
                            after = fresh.last
                            queued = (fresh, self._build_events(creds, fresh, stats))
                    else:
                        more = False
            finally:
                # Only after an exception is a request left here: record what Meta did with it.
                if flying is not None:
                    self._settle_after_failure(creds, *flying, stats)
                if recording is not None:
                    stats.sent += self._recorded(recording)

    def _recorded(self, recording: Future[int]) -> int:
        """How many events the recorder marked sent (0, logged, if that failed: they stay
        pending and go again, under the same event_ids)."""
        try:
            return recording.result()
        except Exception:
            log.exception("conversion.record_failed; accepted by Meta but still pending")
            return 0

    def _settle_after_failure(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: list[Row],
        future: Future[Receipt],
        stats: DispatchStats,
    ) -> None:
        """Record what the request in flight did, when the pipeline failed meanwhile: events
        Meta took must not stay pending (they would go out again)."""
        try:
            receipt = future.result()
        except Exception:  # not taken: they are still pending and go again
            log.exception("conversion.deliver.abandoned count=%s", len(rows))
            return
        try:
            self._accepted(creds, claimed, rows, stats, receipt)
        except Exception:
            log.exception("conversion.record_failed count=%s; sent but still pending", len(rows))

    def _claim(
        self,
        lease: AccountLease,
        limit: int,
        *,
        after: tuple[Any, int] | None = None,
    ) -> Claimed:
        """Read up to ``limit`` due events of the leased account, oldest due first, after
        ``after`` (the previous claim of this turn: its events are in flight). Events too old
        to send are left to the expiry sweep. A read, not a write: the account's lease keeps
        other dispatchers away from these events."""
        now = utcnow()
        rows, more = queue.claim(
            self.db, lease.waba_id, limit, now=now, oldest=send_limit(now), after=after
        )
        return Claimed(lease, rows, destination=self.destinations[GRAPH], more=more)

    # -- sending ----------------------------------------------------------------------------------

    def _build_events(
        self, creds: Credentials, claimed: Claimed, stats: DispatchStats
    ) -> list[Row]:
        """Meta's JSON of every claimed event, built once for all the requests of a split. An
        event that cannot be built fails alone instead of blocking its account's queue."""
        broken: list[tuple[Row, str]] = []
        good: list[Row] = []
        events = claimed.events
        waba_id, ldu, ldu_country, ldu_state = (
            creds.waba_id,
            creds.ldu,
            creds.ldu_country,
            creds.ldu_state,
        )
        for r in claimed.rows:
            try:
                events[r.id] = build_meta_event(
                    event_name=r.event_name,
                    event_time=r.event_unix,
                    event_id=r.event_id,
                    waba_id=waba_id,
                    ctwa_clid=r.ctwa_clid,
                    custom_data=r.custom_data,
                    extra=r.extra,
                    ldu=ldu,
                    ldu_country=ldu_country,
                    ldu_state=ldu_state,
                )
            except (TypeError, ValueError) as exc:
                broken.append((r, f"failed: the event cannot be built for Meta: {exc}"))
            else:
                good.append(r)
        for r, reason in broken:
            stats.failed += self._finalize(
                [r], {"status": Conversion.FAILED, "last_error": reason}, "failed"
            )
            log.error("conversion.failed event_ids=%s reason=%s", r.event_id, reason)
        return good

    def _deliver(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        stats: DispatchStats,
        *,
        probing: bool = False,
    ) -> bool:
        """Send ``rows``; split on an invalid event. False when the account must stop."""
        rows = self._sendable(claimed, rows, stats)
        if not rows:
            return True
        stats.requests += 1
        try:
            receipt = self._post(creds, claimed, rows)
        except Refusal as err:
            return self._rejected(creds, claimed, rows, err, stats, probing=probing)
        self._accepted(creds, claimed, rows, stats, receipt, probing=probing)
        if receipt.throttle is not None:
            self._throttle(claimed.lease, receipt.throttle)
            return False
        return True

    def _sendable(self, claimed: Claimed, rows: Sequence[Row], stats: DispatchStats) -> list[Row]:
        """The ``rows`` that may go out now: still ours, with a lease that outlasts the
        request, and not too old for Meta (those expire here)."""
        rows = self._keep_lease(claimed, rows)
        limit = unix_limit(utcnow())
        stale = [r for r in rows if r.event_unix < limit]
        if stale:  # aged past the limit during a long split: Meta would reject the whole batch
            stats.expired += self._record_expired(claimed, stale)
            rows = [r for r in rows if r.event_unix >= limit]
        return rows

    def _post(self, creds: Credentials, claimed: Claimed, rows: Sequence[Row]) -> Receipt:
        """The request: raises Refusal unless the destination took every event (a refused
        request is put in the request log here; an accepted one with its outcome)."""
        assert claimed.destination is not None
        try:
            return claimed.destination.send(creds, [claimed.events[r.id] for r in rows])
        except Refusal as err:
            if err.receipt is not None:  # a request was made (not one refused before sending)
                self._log_request(
                    self._request_record(creds, claimed, rows, err.receipt, err), rows
                )
            raise

    def _request_record(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        receipt: Receipt,
        err: Refusal | None,
    ) -> RequestRecord:
        """The request log's record of a request to the claim's destination."""
        assert claimed.destination is not None
        return RequestRecord(
            at=receipt.at,
            waba_id=creds.waba_id,
            destination=claimed.destination.name,
            events=len(rows),
            bytes=receipt.bytes,
            duration_ms=receipt.duration_ms,
            http_status=receipt.http_status,
            events_received=receipt.events_received,
            fbtrace_id=receipt.fbtrace_id,
            messages=receipt.messages or None,
            error_code=err.code if err else None,
            error_subcode=err.subcode if err else None,
            error_message=err.message if err else None,
        )

    def _log_request(self, record: RequestRecord, rows: Sequence[Row]) -> None:
        """Put the request in the request log, linked to ``rows`` (best effort: the outcome
        matters more)."""
        try:
            with self.db.transaction() as session:
                record_request(session, record, [r.id for r in rows])
        except Exception:
            log.exception("dispatcher.request_log_failed waba_id=%s", record.waba_id)

    def _record_accepted(
        self, claimed: Claimed, rows: Sequence[Row], creds: Credentials, receipt: Receipt
    ) -> int:
        """The destination took ``rows``: log and count the request and mark them sent; how
        many were."""
        GRAPH_REQUESTS.labels(endpoint=_endpoint(claimed), outcome="ok").inc()
        record = self._request_record(creds, claimed, rows, receipt, None)
        if claimed.at is not None:
            self._log_request(record, rows)
            values = {"status": Conversion.SENT, "dataset_id": creds.dataset_id}
            count = self._finalize(rows, values, "sent", at=claimed.at)
            log.info("conversion.sent count=%s destination=%s", count, claimed.at)
            return count
        return self._record_sent(rows, creds, record)

    def _accepted(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        stats: DispatchStats,
        receipt: Receipt,
        *,
        probing: bool = False,
    ) -> None:
        stats.sent += self._record_accepted(claimed, rows, creds, receipt)
        if probing:
            self._resume(creds.waba_id, "Meta accepted events again")

    def _rejected(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        err: Refusal,
        stats: DispatchStats,
        *,
        probing: bool = False,
    ) -> bool:
        """Deal with the destination's refusal of ``rows``; False when the account must
        stop."""
        disposition = err.disposition
        GRAPH_REQUESTS.labels(endpoint=_endpoint(claimed), outcome=disposition.name.lower()).inc()
        if disposition is Disposition.INVALID and len(rows) > 1:
            middle = len(rows) // 2
            log.info(
                "conversion.batch_rejected size=%s splitting; meta=%s",
                len(rows),
                err.code_label or "-",
            )
            if not self._deliver(creds, claimed, rows[:middle], stats):
                return False
            return self._deliver(creds, claimed, rows[middle:], stats)
        if disposition in (Disposition.INVALID, Disposition.REFUSED):
            stats.failed += self._record_failed(claimed, rows, err)
            if (
                probing and disposition is Disposition.INVALID
            ):  # Meta read the event: token and dataset are fine again
                self._resume(creds.waba_id, "Meta accepted the token again")
        elif disposition is Disposition.ACCOUNT:
            self._record_account_problem(claimed, err, creds, stats)
            return False
        else:
            until = None
            if err.throttle is not None:  # the account (or app) backs off as a whole
                attempts = max(r.attempts for r in rows) + 1
                until = self._throttle(claimed.lease, err.throttle, attempts)
            retried, expired = self._record_retry(claimed, rows, err, not_before=until)
            stats.retried += retried
            stats.expired += expired
            if probing:  # no verdict on the account: ask again later, not event by event
                self._postpone_probe(creds.waba_id)
            if until is not None:  # the rest of the turn waits too
                return False
        return True

    def _throttle(self, lease: AccountLease, reported: Throttle, attempts: int = 1) -> datetime:
        """Hold the account (or, for the app's limit, every account) for Meta's estimate,
        else for the retry backoff of ``attempts``; until when. The turn ends."""
        waba_id = lease.waba_id
        lease.throttled = True
        now = utcnow()
        until = now + (reported.after or backoff(attempts, self.settings.retry_base_seconds))
        with self.db.transaction() as session:
            throttle.record(session, waba_id, reported, until)
        if reported.app_wide:
            current = self._app_throttled_until
            self._app_throttled_until = until if current is None else max(current, until)
        log.warning(
            "account.throttled waba_id=%s scope=%s until=%s reason=%s",
            waba_id,
            reported.scope,
            until.isoformat(),
            reported.reason,
        )
        return until

    def _app_throttled(self) -> bool:
        until = self._app_throttled_until
        return until is not None and utcnow() < until

    def _keep_lease(self, claimed: Claimed, rows: Sequence[Row]) -> list[Row]:
        """The ``rows``, if the account's lease outlasts the coming request; none if another
        dispatcher took the account.

        While the lease has time left nobody else can have taken the account. Otherwise it is
        extended first; if another dispatcher took the account after the lease ran out, this
        one sends nothing more of it (now and for the rest of the turn): sending the events
        again would make Meta count them twice.
        """
        lease = claimed.lease
        if lease.lost:
            return []
        needed = timedelta(seconds=self.settings.graph_timeout_seconds) + LEASE_SLACK
        if not leases.outlasts(self.db, lease, needed, self.lease):
            log.warning(
                "dispatcher.lease_lost waba_id=%s unsent=%s; another dispatcher took the "
                "account over",
                lease.waba_id,
                len(rows),
            )
            return []
        return list(rows)

    def _finalize(
        self, rows: Sequence[Row], values: dict[str, Any], outcome: str, *, at: str | None = None
    ) -> int:
        """Set ``values`` on the ``rows`` still pending; how many that was, counted under
        ``outcome`` (an outcome another dispatcher recorded first stands, and is not counted
        again). With ``at``, the outcome is that destination's (see _finalize_at)."""
        if at is not None:
            return self._finalize_at(at, rows, values, outcome)
        with self.db.transaction() as session:
            result = session.execute(
                update(Conversion)
                .where(id_in([r.id for r in rows], self.db.dialect), UNSETTLED)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        return _counted(rowcount(result), outcome)

    def _record_sent(self, rows: Sequence[Row], creds: Credentials, record: RequestRecord) -> int:
        """``_finalize`` with the sent outcome and the request's log, in the driver's SQL: the
        one write of every 1,000 events. If the log's row cannot be written, the outcome is
        written without it."""
        ids = [r.id for r in rows]
        try:
            updated = queue.mark_sent(self.db, ids, creds.dataset_id, utcnow(), record)
        except Exception:  # a database that is down fails the second try too, and raises
            log.exception(
                "dispatcher.request_log_failed waba_id=%s; marking sent without it", creds.waba_id
            )
            updated = queue.mark_sent(self.db, ids, creds.dataset_id, utcnow())
        count = _counted(updated, "sent")  # with the writers' turn given back
        log.info("conversion.sent count=%s dataset_id=%s", count, creds.dataset_id)
        return count

    def _resume(self, waba_id: str, why: str) -> None:
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is not None:
                registry.resume(account, why)

    def _postpone_probe(self, waba_id: str) -> None:
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is not None and account.status == Account.PAUSED:
                account.probe_at = utcnow() + PAUSED_PROBE_INTERVAL

    def _record_expired(self, claimed: Claimed, rows: Sequence[Row]) -> int:
        reason = (
            "expired: reached Meta's 7-day limit on event_time while its batch was being sent "
            "(see the previous error in the logs)"
        )
        count = self._finalize(
            rows, {"status": Conversion.EXPIRED, "last_error": reason}, "expired", at=claimed.at
        )
        if count:
            log.warning("conversion.expired count=%s reason=7-day limit", count)
        return count

    def _record_failed(self, claimed: Claimed, rows: Sequence[Row], err: Refusal) -> int:
        sentence = err.sentence
        values = {
            "status": Conversion.FAILED,
            "attempts": Conversion.attempts + 1,
            **err.error_values(sentence),
        }
        count = self._finalize(rows, values, "failed", at=claimed.at)
        if count:
            log.error(
                "conversion.failed event_ids=%s reason=%s",
                ",".join(r.event_id for r in rows[:10]),
                sentence,
            )
        return count

    def _record_retry(
        self,
        claimed: Claimed,
        rows: Sequence[Row],
        err: Refusal,
        *,
        not_before: datetime | None = None,
    ) -> tuple[int, int]:
        """Back off each event (until ``not_before``, the account's throttle, when given); one
        whose next try would cross the 7-day limit expires now."""
        now = utcnow()
        sentence = err.sentence
        base = self.settings.retry_base_seconds
        retried = expired = 0
        # Rows of one batch share their attempt count in practice: one update per count.
        by_attempts: dict[int, list[Row]] = {}
        for r in rows:
            by_attempts.setdefault(r.attempts + 1, []).append(r)  # this one included
        for attempts, group in by_attempts.items():
            # Throttled, the batch goes again when the account does.
            next_at = not_before or now + backoff(attempts, base)
            # The next try must still be in time: next_at + margin < event_time + 7 days.
            last_chance = unix_limit(next_at)
            keep = [r for r in group if r.event_unix >= last_chance]
            late = [r for r in group if r.event_unix < last_chance]
            if keep:
                values = {
                    "attempts": Conversion.attempts + 1,
                    "next_attempt_at": next_at,
                    **err.error_values(f"will retry: {sentence}"),
                }
                retried += self._finalize(keep, values, "retry", at=claimed.at)
            if late:
                reason = (
                    "expired: Meta's 7-day limit on event_time would pass before the next "
                    f"attempt; last error: {sentence}"
                )
                values = {
                    "status": Conversion.EXPIRED,
                    "attempts": Conversion.attempts + 1,
                    **err.error_values(reason),
                }
                expired += self._finalize(late, values, "expired", at=claimed.at)
        log.warning(
            "conversion.deliver.retry count=%s expired=%s reason=%s", retried, expired, sentence
        )
        return retried, expired

    def _record_account_problem(
        self,
        claimed: Claimed,
        err: Refusal,
        creds: Credentials,
        stats: DispatchStats,
    ) -> None:
        """Pause the account; the claim's events wait, their attempt not counted (the events
        were never at fault)."""
        sentence = err.sentence
        with self.db.transaction() as session:
            account = registry.get_account(session, creds.waba_id)
            if account is not None and registry.pause(account, sentence, code=err.code_label):
                stats.paused_accounts.append(creds.waba_id)
            released = session.execute(
                update(Conversion)
                .where(id_in(claimed.ids, self.db.dialect), UNSETTLED)
                .values(
                    next_attempt_at=utcnow(),
                    **err.error_values(held(f"account paused: {sentence}")),
                )
                .execution_options(synchronize_session=False)
            )
        stats.held += _counted(rowcount(released), "held")
