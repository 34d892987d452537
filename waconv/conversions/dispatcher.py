"""The dispatcher: drains the outbox to each account's dataset, in batches, with leases.

One step, per account with due events:

1. claim (short transaction): up to ``MAX_BATCH`` due events, ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL (``BEGIN IMMEDIATE`` serializes claims on SQLite), leased with ``leased_until``
   and a ``lease_token``; ``attempts`` counts up;
2. send, with no transaction open;
3. record (short transaction), only on rows that still carry our lease token.

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
the ones that aged meanwhile, and a periodic sweep marks them ``expired``. A dispatcher whose
lease ran out (stalled in a long split) sends nothing more of that claim: another dispatcher
owns those events now.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    BigInteger,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from waconv.accounts import registry
from waconv.accounts.registry import PAUSED_PROBE_INTERVAL, Credentials
from waconv.clock import utcnow
from waconv.config import ConfigError
from waconv.conversions.events import MAX_EVENT_AGE, build_meta_event
from waconv.graph.client import GraphClient
from waconv.graph.errors import Disposition, GraphError, classify, operator_message
from waconv.metrics import CONVERSION_EVENTS, GRAPH_REQUESTS
from waconv.models import Account, Conversion
from waconv.services import Services

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # Meta rejects requests with more events
# The default of WACONV_LEASE_SECONDS (the contract: events leased by a dispatcher that died
# are due again within 60 seconds).
LEASE = timedelta(seconds=60)
# Before each request the lease must outlast the request timeout by this much, else it is
# extended first (a long split makes many requests under one claim).
LEASE_SLACK = timedelta(seconds=5)
MAX_BACKOFF = timedelta(minutes=15)
# A WABA whose dataset could not be created automatically is tried again this often (a
# transient Graph failure must not hold its events until an operator steps in).
PROVISION_RETRY = timedelta(hours=1)
JITTER = 0.2  # ±20 % so that retries of many events do not arrive in lock-step
# An event is not sent when it would reach Meta this close to the 7-day limit.
SEND_MARGIN = timedelta(minutes=1)
# Events of an account that cannot send (no token, no dataset) are looked at again after this.
HOLD_DELAY = timedelta(seconds=60)
IDLE_POLL_SECONDS = 1.0  # the contract: idle, look for due events at least once a second
# The sweep that marks stale events `expired` scans every due event; claims skip stale events
# anyway, so the sweep runs at the start of each run_once and then at most this often.
EXPIRE_SWEEP_SECONDS = 10.0
# One account's turn of back-to-back batches within a step: then the other accounts get theirs,
# and a stop request or a run's deadline is seen at least this often.
ACCOUNT_TURN_SECONDS = 1.0


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Delay after the ``attempts``-th failed attempt: base * 2^(attempts-1), ±20 %, at most
    15 min (1st failure: base, 2nd: 2 * base, ...)."""
    # The exponent is bounded: 2**1024 would not fit a float, and 2**30 seconds is past any cap.
    raw = base_seconds * (2 ** min(max(attempts - 1, 0), 30))
    capped = min(raw, MAX_BACKOFF.total_seconds())
    jittered = capped * random.uniform(1 - JITTER, 1 + JITTER)
    return timedelta(seconds=min(jittered, MAX_BACKOFF.total_seconds()))


def send_limit(now: datetime) -> datetime:
    """Events whose event_time is before this are too old to send now (7 days - margin)."""
    return now - MAX_EVENT_AGE + SEND_MARGIN


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


class Row(NamedTuple):
    """A claimed event: what sending it needs (plain tuple: the hot path reads it often)."""

    id: int
    event_id: str
    event_name: str
    event_time: datetime
    ctwa_clid: str
    custom_data: dict[str, Any] | None
    extra: dict[str, Any] | None
    attempts: int


@dataclass
class Claimed:
    """One claim: its lease, its rows (by id) and their Meta events."""

    token: str
    leased_until: datetime
    rows: list[Row]
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    # After a lease extension: the ids still leased to us (None: all of them, never extended).
    owned: set[int] | None = None

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


_CLAIM_COLUMNS = (  # in the order of Row's fields
    Conversion.id,
    Conversion.event_id,
    Conversion.event_name,
    Conversion.event_time,
    Conversion.ctwa_clid,
    # As text, decoded in _claim_rows: SQLAlchemy's JSON result processing (and psycopg's
    # jsonb loader) cost more per row than the decoding itself.
    cast(Conversion.custom_data, Text),
    cast(Conversion.extra, Text),
    Conversion.attempts,
)


def _json_or_none(text: str | None) -> Any:
    return None if text is None or text == "null" else orjson.loads(text)


def _claim_rows(result: Any) -> list[Row]:
    return [
        Row(i, eid, name, when, clid, _json_or_none(custom), _json_or_none(extra), attempts)
        for i, eid, name, when, clid, custom, extra, attempts in result.all()
    ]


def _due(now: datetime) -> Any:
    return or_(
        and_(Conversion.status == Conversion.PENDING, Conversion.next_attempt_at <= now),
        and_(Conversion.status == Conversion.SENDING, Conversion.leased_until < now),
    )


def _id_in(ids: Sequence[int], dialect: str) -> Any:
    """``id IN (...)``; on PostgreSQL ``id = ANY(:array)``: one parameter instead of 1,000,
    which PostgreSQL parses and plans noticeably faster."""
    if dialect == "postgresql":
        return Conversion.id == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
    return Conversion.id.in_(ids)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class Dispatcher:
    def __init__(
        self,
        services: Services,
        *,
        graph: GraphClient | None = None,
        batch_size: int = MAX_BATCH,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self.graph = graph or services.graph
        self.batch_size = batch_size
        self.lease = timedelta(seconds=self.settings.lease_seconds)
        self._swept_at: float | None = None  # time.monotonic() of the last expiry sweep
        self._stop: threading.Event | None = None  # run_forever's stop request
        self._deadline: float | None = None  # run_once's max_seconds, in time.monotonic()

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
        """One pass: expire what can no longer be sent, then one batch per account with due
        events."""
        stats = DispatchStats()
        clock = time.monotonic()
        if self._swept_at is None or clock - self._swept_at >= EXPIRE_SWEEP_SECONDS:
            stats.expired += self._expire_stale()
            self._swept_at = clock
        for waba_id in self._accounts_with_due_events():
            try:
                stats.add(self._dispatch_account(waba_id))
            except Exception as exc:  # one account's trouble must not starve the others
                log.exception("dispatcher.account_failed waba_id=%s", waba_id)
                stats.errors.append(exc)
        return stats

    # -- state changes --------------------------------------------------------------------------

    def _expire_stale(self) -> int:
        now = utcnow()
        with self.db.transaction() as session:
            result = session.execute(
                update(Conversion)
                .where(_due(now), Conversion.event_time < send_limit(now))
                .values(
                    status=Conversion.EXPIRED,
                    leased_until=None,
                    lease_token=None,
                    last_error=(
                        "expired: not delivered before Meta's 7-day limit on event_time "
                        "(see the previous error in the logs and metrics)"
                    ),
                )
                .execution_options(synchronize_session=False)
            )
        expired = _rowcount(result)
        if expired:
            CONVERSION_EVENTS.labels(outcome="expired").inc(expired)
            log.warning("conversion.expired count=%s reason=7-day limit", expired)
        return expired

    def _accounts_with_due_events(self) -> list[str]:
        # EXISTS per account: an index probe each, not a scan of every due event.
        now = utcnow()
        mine = Conversion.waba_id == Account.waba_id
        pending = exists().where(
            mine, Conversion.status == Conversion.PENDING, Conversion.next_attempt_at <= now
        )
        lapsed = exists().where(
            mine, Conversion.status == Conversion.SENDING, Conversion.leased_until < now
        )
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(Account.waba_id)
                    .where(
                        or_(Account.status == Account.ACTIVE, Account.probe_at <= now),
                        or_(pending, lapsed),
                    )
                    .order_by(Account.waba_id)
                )
            )

    def _dispatch_account(self, waba_id: str) -> DispatchStats:
        stats = DispatchStats()
        provision = False
        claimed: Claimed | None = None
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is None:
                return stats
            creds, problem = self._credentials(account)
            probing = account.status == Account.PAUSED
            if creds is not None and creds.dataset_id is None:
                tried = account.dataset_provision_tried_at
                if tried is None or utcnow() - tried >= PROVISION_RETRY:
                    # Recorded (and committed) before the call: one try, whoever gets here first.
                    account.dataset_provision_tried_at = utcnow()
                    provision = True
                else:
                    problem = self._no_dataset(waba_id)
            if problem is not None:
                stats.held = self._hold(session, waba_id, problem)
                return stats
            if not provision:
                claimed = self._claim(session, waba_id, 1 if probing else self.batch_size)
        assert creds is not None
        if provision:
            # The Graph call happens with no transaction open (SQLite would hold its write lock).
            creds = self._provision(creds)
            with self.db.transaction() as session:
                if creds.dataset_id is None:
                    stats.held = self._hold(session, waba_id, self._no_dataset(waba_id))
                    return stats
                claimed = self._claim(session, waba_id, 1 if probing else self.batch_size)
        assert claimed is not None
        if not claimed.rows:
            return stats
        rows = self._build_events(creds, claimed, stats)
        if probing or len(claimed.rows) < self.batch_size:  # nothing more to pipeline
            if rows:
                self._deliver(creds, claimed, rows, stats, probing=probing)
            return stats
        self._pipeline(creds, claimed, rows, stats)
        return stats

    def _more_batches(self, turn_ends: float) -> bool:
        """Whether this account's turn may claim another batch."""
        now = time.monotonic()
        if now >= turn_ends or (self._deadline is not None and now > self._deadline):
            return False
        return self._stop is None or not self._stop.is_set()

    def _pipeline(
        self, creds: Credentials, claimed: Claimed, rows: list[Row], stats: DispatchStats
    ) -> None:
        """Send the account's batches back to back, starting with ``claimed`` (built).

        Per turn of the loop: wait for batch k's answer; deal with a failure before anything
        else goes out (a split sends from this thread, nothing else being in flight); put batch
        k+1 on the wire; then, while it is there, record batch k as sent and claim and build
        batch k+2. On PostgreSQL the sender thread records its batch itself, as soon as Meta
        took it, in a transaction of its own beside this thread's claim (SQLite has one writer
        at a time: there the claim would only make it wait). A request is only ever waited
        for, never abandoned: if this thread fails, the request in flight is awaited and
        recorded before the exception leaves. A claimed batch that never went out is released
        when the account pauses, else its lease lapses.
        """
        turn_ends = time.monotonic() + ACCOUNT_TURN_SECONDS
        waba_id = creds.waba_id
        queued: tuple[Claimed, list[Row]] | None = (claimed, rows)  # claimed, built, unsent
        flying: tuple[Claimed, list[Row], Future[int | None]] | None = None
        record_in_sender = self.db.dialect != "sqlite"
        more = True  # the last claim was full: more may be due
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-send") as sender:
            try:
                while queued is not None or flying is not None:
                    answered: tuple[Claimed, list[Row]] | None = None
                    if flying is not None:
                        sent_claim, sent_rows, future = flying
                        flying = None
                        try:
                            recorded = future.result()
                        except GraphError as err:
                            if not self._rejected(creds, sent_claim, sent_rows, err, stats):
                                if queued is not None:  # the account paused: give them back
                                    self._record_account_problem(queued[0], err, creds, stats)
                                    queued = None
                                return
                        else:
                            if recorded is None:
                                answered = (sent_claim, sent_rows)
                            else:
                                stats.sent += recorded
                    if queued is not None:
                        next_claim, next_rows = queued
                        queued = None
                        next_rows = self._sendable(next_claim, next_rows, stats)
                        if next_rows:
                            stats.requests += 1
                            future = sender.submit(
                                self._post_and_record,
                                creds,
                                next_claim,
                                next_rows,
                                record=record_in_sender,
                            )
                            flying = (next_claim, next_rows, future)
                    if answered is not None:
                        self._accepted(creds, answered[0], answered[1], stats)
                    if more and self._more_batches(turn_ends):
                        with self.db.transaction() as session:
                            fresh = self._claim(session, waba_id, self.batch_size)
                        more = len(fresh.rows) == self.batch_size
                        if fresh.rows:
                            queued = (fresh, self._build_events(creds, fresh, stats))
                    else:
                        more = False
            finally:
                # Only after an exception is anything left here.
                if flying is not None:  # a request was out: record what Meta did with it
                    self._settle_after_failure(creds, *flying, stats)
                if queued is not None:  # claimed, never sent: due again now, not in a minute
                    self._release_unsent(queued[0])

    def _release_unsent(self, claimed: Claimed) -> None:
        """Give back a claim that never went out, its attempt not counted (best effort: the
        pipeline is failing already; if this fails too, the lease lapses)."""
        try:
            back = {"status": Conversion.PENDING, "attempts": Conversion.attempts - 1}
            self._finalize(claimed, claimed.rows, back, outcome=None)
        except Exception:
            log.exception("conversion.release_failed count=%s", len(claimed.rows))

    def _settle_after_failure(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: list[Row],
        future: Future[int | None],
        stats: DispatchStats,
    ) -> None:
        """Record what the request in flight did, when the pipeline failed meanwhile: events
        Meta took must not stay leased (they would go out again when the lease lapses)."""
        try:
            recorded = future.result()
        except Exception:  # not taken (or not recorded): due again when the lease lapses
            log.exception("conversion.deliver.abandoned count=%s", len(rows))
            return
        if recorded is not None:
            stats.sent += recorded
            return
        try:
            self._accepted(creds, claimed, rows, stats)
        except Exception:
            log.exception("conversion.record_failed count=%s; sent but still leased", len(rows))

    def _credentials(self, account: Account) -> tuple[Credentials | None, str | None]:
        """The account's credentials, or why its events must wait."""
        try:
            creds = registry.credentials(account, self.settings)
        except ConfigError as exc:  # its stored token does not open with this secret key
            return None, f"held: cannot read the access token of {account.waba_id}: {exc}"
        if creds.token is None:
            return None, (
                f"held: no access token for WhatsApp Business Account {account.waba_id}; run "
                f"`waconv accounts set-token --waba-id {account.waba_id}` or set "
                "WACONV_ACCESS_TOKEN"
            )
        return creds, None

    @staticmethod
    def _no_dataset(waba_id: str) -> str:
        return (
            f"held: WhatsApp Business Account {waba_id} has no dataset; run "
            f"`waconv provision-dataset --waba-id {waba_id}`"
        )

    def _provision(self, creds: Credentials) -> Credentials:
        """A WABA without a dataset gets one once, automatically, when the token allows it."""
        waba_id = creds.waba_id
        assert creds.token is not None
        try:
            dataset_id = self.graph.create_dataset(waba_id, creds.token)
        except GraphError as err:
            GRAPH_REQUESTS.labels(endpoint="dataset", outcome="error").inc()
            log.error(
                "account.provision_failed waba_id=%s reason=%s",
                waba_id,
                operator_message(err, waba_id=waba_id, action="create the dataset"),
            )
            return creds
        GRAPH_REQUESTS.labels(endpoint="dataset", outcome="ok").inc()
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is None:
                return creds
            if account.dataset_id is None:
                account.dataset_id = dataset_id
                log.info(
                    "account.dataset_provisioned waba_id=%s dataset_id=%s", waba_id, dataset_id
                )
            new, _ = self._credentials(account)
        return new or creds

    def _hold(self, session: Session, waba_id: str, reason: str) -> int:
        now = utcnow()
        result = session.execute(
            update(Conversion)
            .where(Conversion.waba_id == waba_id, _due(now))
            .values(
                status=Conversion.PENDING,
                next_attempt_at=now + HOLD_DELAY,
                leased_until=None,
                lease_token=None,
                last_error=reason,
            )
            .execution_options(synchronize_session=False)
        )
        held = _rowcount(result)
        if held:
            CONVERSION_EVENTS.labels(outcome="held").inc(held)
            log.warning("conversion.held waba_id=%s count=%s reason=%s", waba_id, held, reason)
        return held

    def _claim(self, session: Session, waba_id: str, limit: int) -> Claimed:
        """Lease up to ``limit`` due events of the account: lapsed leases first, then pending
        ones by due time. Events too old to send are left to the expiry sweep."""
        now = utcnow()
        token = secrets.token_hex(8)
        leased_until = now + self.lease
        fresh = Conversion.event_time >= send_limit(now)
        lapsed = select(Conversion.id).where(
            Conversion.waba_id == waba_id,
            Conversion.status == Conversion.SENDING,
            Conversion.leased_until < now,
            fresh,
        )
        pending = select(Conversion.id).where(
            Conversion.waba_id == waba_id,
            Conversion.status == Conversion.PENDING,
            Conversion.next_attempt_at <= now,
            fresh,
        )
        rows: list[Row] = []
        # One UPDATE ... WHERE id IN (SELECT ... LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING
        # per kind: a single round trip, no list of 1,000 ids. Lapsed leases are few (a
        # dispatcher died), so their query is cheap; pending ones come oldest-due first.
        for candidates in (lapsed, pending.order_by(Conversion.next_attempt_at)):
            wanted = limit - len(rows)
            if wanted <= 0:
                break
            subquery = candidates.limit(wanted)
            if self.db.dialect == "postgresql":
                # = ANY(ARRAY(...)): an InitPlan and primary-key lookups. With IN (...) the
                # planner may hash-join the subquery against a scan of the whole table.
                locked = subquery.with_for_update(skip_locked=True).scalar_subquery()
                chosen = Conversion.id == any_(func.array(locked))
            else:  # BEGIN IMMEDIATE (waconv.db) already serializes claims on SQLite
                chosen = Conversion.id.in_(subquery.scalar_subquery())
            # Core, not the ORM: the ORM's bulk-update RETURNING path cost more per row than
            # the database's work (measured: 17 of 32 ms CPU per 1,000 rows on SQLite).
            rows.extend(
                _claim_rows(
                    session.connection().execute(
                        update(Conversion)
                        .where(chosen)
                        .values(
                            status=Conversion.SENDING,
                            leased_until=leased_until,
                            lease_token=token,
                            attempts=Conversion.attempts + 1,
                        )
                        .returning(*_CLAIM_COLUMNS)
                        .execution_options(synchronize_session=False)
                    )
                )
            )
        rows.sort(key=lambda r: r.id)
        return Claimed(token, leased_until, rows)

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
                    event_time=r.event_time,
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
                claimed, [r], {"status": Conversion.FAILED, "last_error": reason}, "failed"
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
            self._post(creds, claimed, rows)
        except GraphError as err:
            return self._rejected(creds, claimed, rows, err, stats, probing=probing)
        self._accepted(creds, claimed, rows, stats, probing=probing)
        return True

    def _sendable(self, claimed: Claimed, rows: Sequence[Row], stats: DispatchStats) -> list[Row]:
        """The ``rows`` that may go out now: still ours, with a lease that outlasts the
        request, and not too old for Meta (those expire here)."""
        rows = self._keep_lease(claimed, rows)
        limit = send_limit(utcnow())
        stale = [r for r in rows if r.event_time < limit]
        if stale:  # aged past the limit during a long split: Meta would reject the whole batch
            stats.expired += self._record_expired(claimed, stale)
            rows = [r for r in rows if r.event_time >= limit]
        return rows

    def _post(self, creds: Credentials, claimed: Claimed, rows: Sequence[Row]) -> None:
        """The request alone: no database, no shared state. Raises GraphError unless Meta took
        every event."""
        assert creds.token is not None and creds.dataset_id is not None
        self.graph.send_events(
            creds.dataset_id,
            creds.token,
            [claimed.events[r.id] for r in rows],
            partner_agent=creds.partner_agent,
            test_event_code=self.settings.test_event_code or None,
        )

    def _post_and_record(
        self, creds: Credentials, claimed: Claimed, rows: Sequence[Row], *, record: bool
    ) -> int | None:
        """The pipeline's sender: the request, then, with ``record``, the rows marked sent in a
        transaction of its own; how many were (None: not recorded here)."""
        self._post(creds, claimed, rows)
        return self._record_accepted(claimed, rows, creds) if record else None

    def _record_accepted(self, claimed: Claimed, rows: Sequence[Row], creds: Credentials) -> int:
        """Meta took ``rows``: count the request and mark them sent; how many were."""
        GRAPH_REQUESTS.labels(endpoint="events", outcome="ok").inc()
        return self._record_sent(claimed, rows, creds)

    def _accepted(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        stats: DispatchStats,
        *,
        probing: bool = False,
    ) -> None:
        stats.sent += self._record_accepted(claimed, rows, creds)
        if probing:
            self._resume(creds.waba_id, "Meta accepted events again")

    def _rejected(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[Row],
        err: GraphError,
        stats: DispatchStats,
        *,
        probing: bool = False,
    ) -> bool:
        """Deal with Meta's refusal of ``rows``; False when the account must stop."""
        disposition = classify(err)
        GRAPH_REQUESTS.labels(endpoint="events", outcome=disposition.name.lower()).inc()
        if disposition is Disposition.INVALID and len(rows) > 1:
            middle = len(rows) // 2
            log.info(
                "conversion.batch_rejected size=%s splitting; meta=%s",
                len(rows),
                err.code_label,
            )
            if not self._deliver(creds, claimed, rows[:middle], stats):
                return False
            return self._deliver(creds, claimed, rows[middle:], stats)
        if disposition is Disposition.INVALID:
            stats.failed += self._record_failed(claimed, rows, err, creds)
            if probing:  # Meta read the event: token and dataset are fine again
                self._resume(creds.waba_id, "Meta accepted the token again")
        elif disposition is Disposition.ACCOUNT:
            self._record_account_problem(claimed, err, creds, stats)
            return False
        else:
            retried, expired = self._record_retry(claimed, rows, err, creds)
            stats.retried += retried
            stats.expired += expired
            if probing:  # no verdict on the account: ask again later, not event by event
                self._postpone_probe(creds.waba_id)
        return True

    def _keep_lease(self, claimed: Claimed, rows: Sequence[Row]) -> list[Row]:
        """The ``rows`` still ours, with a lease that outlasts the coming request.

        While the lease has time left nobody else can have taken the events. Otherwise it is
        extended first, and events another dispatcher claimed after it ran out are dropped
        (now and for the rest of the claim): sending them again would make Meta count them
        twice.
        """
        now = utcnow()
        needed = timedelta(seconds=self.settings.graph_timeout_seconds) + LEASE_SLACK
        if claimed.leased_until - now < needed:
            leased_until = now + max(self.lease, needed)
            with self.db.transaction() as session:
                # The whole claim (later halves of a split too) gets the longer lease.
                claimed.owned = set(
                    session.scalars(
                        update(Conversion)
                        .where(
                            _id_in(claimed.ids, self.db.dialect),
                            Conversion.lease_token == claimed.token,
                        )
                        .values(leased_until=leased_until)
                        .returning(Conversion.id)
                        .execution_options(synchronize_session=False)
                    )
                )
            claimed.leased_until = leased_until
        if claimed.owned is None:
            return list(rows)
        kept = [r for r in rows if r.id in claimed.owned]
        if len(kept) < len(rows):
            log.warning(
                "conversion.lease_lost count=%s; another dispatcher took them over",
                len(rows) - len(kept),
            )
        return kept

    def _finalize(
        self, claimed: Claimed, rows: Sequence[Row], values: dict[str, Any], outcome: str | None
    ) -> int:
        """Set ``values`` on the rows still leased to us, and end their lease; how many that
        was, counted under ``outcome`` (a late finalize of a lost lease changes, and counts,
        nothing)."""
        with self.db.transaction() as session:
            result = session.execute(
                update(Conversion)
                .where(
                    _id_in([r.id for r in rows], self.db.dialect),
                    Conversion.lease_token == claimed.token,
                )
                .values(leased_until=None, lease_token=None, **values)
                .execution_options(synchronize_session=False)
            )
        count = _rowcount(result)
        if count and outcome is not None:
            CONVERSION_EVENTS.labels(outcome=outcome).inc(count)
        return count

    def _record_sent(self, claimed: Claimed, rows: Sequence[Row], creds: Credentials) -> int:
        values = {
            "status": Conversion.SENT,
            "sent_at": utcnow(),
            "dataset_id": creds.dataset_id,
            "last_error": None,
        }
        count = self._finalize(claimed, rows, values, "sent")
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
            claimed, rows, {"status": Conversion.EXPIRED, "last_error": reason}, "expired"
        )
        if count:
            log.warning("conversion.expired count=%s reason=7-day limit", count)
        return count

    def _error_values(self, err: GraphError, sentence: str) -> dict[str, Any]:
        return {
            "last_error": sentence,
            "last_error_code": err.code,
            "last_error_subcode": err.subcode,
            "last_error_title": err.user_title or err.type,
            "last_error_message": err.user_msg or err.message,
            "last_error_fbtrace_id": err.fbtrace_id,
        }

    def _record_failed(
        self,
        claimed: Claimed,
        rows: Sequence[Row],
        err: GraphError,
        creds: Credentials,
    ) -> int:
        sentence = operator_message(err, waba_id=creds.waba_id)
        values = {"status": Conversion.FAILED, **self._error_values(err, sentence)}
        count = self._finalize(claimed, rows, values, "failed")
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
        err: GraphError,
        creds: Credentials,
    ) -> tuple[int, int]:
        """Back off each event; one whose next try would cross the 7-day limit expires now."""
        now = utcnow()
        sentence = operator_message(err, waba_id=creds.waba_id)
        base = self.settings.retry_base_seconds
        retried = expired = 0
        # Rows of one batch share their attempt count in practice: one update per count.
        by_attempts: dict[int, list[Row]] = {}
        for r in rows:
            by_attempts.setdefault(r.attempts, []).append(r)
        for attempts, group in by_attempts.items():
            next_at = now + backoff(attempts, base)
            # The next try must still be in time: next_at + margin < event_time + 7 days.
            last_chance = send_limit(next_at)
            keep = [r for r in group if r.event_time >= last_chance]
            late = [r for r in group if r.event_time < last_chance]
            if keep:
                values = {
                    "status": Conversion.PENDING,
                    "next_attempt_at": next_at,
                    **self._error_values(err, f"will retry: {sentence}"),
                }
                retried += self._finalize(claimed, keep, values, "retry")
            if late:
                reason = (
                    "expired: Meta's 7-day limit on event_time would pass before the next "
                    f"attempt; last error: {sentence}"
                )
                values = {"status": Conversion.EXPIRED, **self._error_values(err, reason)}
                expired += self._finalize(claimed, late, values, "expired")
        log.warning(
            "conversion.deliver.retry count=%s expired=%s reason=%s", retried, expired, sentence
        )
        return retried, expired

    def _record_account_problem(
        self,
        claimed: Claimed,
        err: GraphError,
        creds: Credentials,
        stats: DispatchStats,
    ) -> None:
        """Pause the account; every event of the claim still leased to us goes back to waiting,
        its attempt not counted (the events were never at fault)."""
        sentence = operator_message(err, waba_id=creds.waba_id)
        with self.db.transaction() as session:
            account = registry.get_account(session, creds.waba_id)
            code = err.code_label if err.code is not None else None
            if account is not None and registry.pause(account, sentence, code=code):
                stats.paused_accounts.append(creds.waba_id)
            released = session.execute(
                update(Conversion)
                .where(
                    _id_in(claimed.ids, self.db.dialect), Conversion.lease_token == claimed.token
                )
                .values(
                    status=Conversion.PENDING,
                    attempts=Conversion.attempts - 1,
                    next_attempt_at=utcnow(),
                    leased_until=None,
                    lease_token=None,
                    **self._error_values(err, f"held: account paused: {sentence}"),
                )
                .execution_options(synchronize_session=False)
            )
        count = _rowcount(released)
        stats.held += count
        if count:
            CONVERSION_EVENTS.labels(outcome="held").inc(count)
