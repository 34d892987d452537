"""The dispatcher: drains the outbox to each account's dataset, in batches, with leases.

One step, per account with due events:

1. claim (short transaction): up to ``MAX_BATCH`` due events, ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL, leased with ``leased_until`` and a ``lease_token``; ``attempts`` counts up;
2. send, with no transaction open;
3. record (short transaction), only on rows that still carry our lease token.

A batch Meta rejects for an invalid event is split in halves, and each half sent, until the bad
events stand alone: they fail with Meta's words, the others go out in the same pass. A
retryable failure backs off (doubling, jitter, 15-minute cap) but never past the 7-day limit:
such an event expires with the reason. An account problem (token, permission, dataset) pauses
that account: its events wait, untouched, until the token is fixed.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from waconv.accounts import registry
from waconv.accounts.registry import Credentials
from waconv.clock import utcnow
from waconv.conversions.events import MAX_EVENT_AGE, build_meta_event
from waconv.graph.client import GraphClient
from waconv.graph.errors import Disposition, GraphError, classify, operator_message
from waconv.metrics import CONVERSION_EVENTS, GRAPH_REQUESTS
from waconv.models import Account, Conversion
from waconv.services import Services

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # Meta rejects requests with more events
# The contract: events leased by a dispatcher that died are due again within 60 seconds.
LEASE = timedelta(seconds=60)
MAX_BACKOFF = timedelta(minutes=15)
JITTER = 0.2  # ±20 % so that retries of many events do not arrive in lock-step
# An event is not sent when it would reach Meta this close to the 7-day limit.
SEND_MARGIN = timedelta(minutes=1)
# Events of an account that cannot send (no token, no dataset) are looked at again after this.
HOLD_DELAY = timedelta(seconds=60)
IDLE_POLL_SECONDS = 1.0  # the contract: idle, look for due events at least once a second


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Delay before attempt ``attempts + 1``: base × 2^(attempts-1), ±20 %, at most 15 min."""
    raw = base_seconds * (2 ** max(attempts - 1, 0))
    capped = min(raw, MAX_BACKOFF.total_seconds())
    jittered = capped * random.uniform(1 - JITTER, 1 + JITTER)
    return timedelta(seconds=min(jittered, MAX_BACKOFF.total_seconds()))


@dataclass
class DispatchStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    held: int = 0
    requests: int = 0
    paused_accounts: list[str] = field(default_factory=list)

    def add(self, other: DispatchStats) -> None:
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.expired += other.expired
        self.held += other.held
        self.requests += other.requests
        self.paused_accounts.extend(other.paused_accounts)

    @property
    def moved(self) -> int:
        return self.sent + self.retried + self.failed + self.expired + self.held


@dataclass
class Claimed:
    token: str
    leased_until: datetime
    rows: list[dict[str, Any]]


_CLAIM_COLUMNS = (
    Conversion.id,
    Conversion.event_id,
    Conversion.event_name,
    Conversion.event_time,
    Conversion.ctwa_clid,
    Conversion.custom_data,
    Conversion.extra,
    Conversion.attempts,
)


def _due(now: datetime) -> Any:
    return or_(
        and_(Conversion.status == Conversion.PENDING, Conversion.next_attempt_at <= now),
        and_(Conversion.status == Conversion.SENDING, Conversion.leased_until < now),
    )


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

    # -- the loop -----------------------------------------------------------------------------

    def run_once(self, *, max_seconds: float | None = None) -> DispatchStats:
        """Send everything due now, then return. Every drain has a deadline."""
        deadline = time.monotonic() + max_seconds if max_seconds else None
        total = DispatchStats()
        while True:
            step = self.step()
            total.add(step)
            if step.moved == 0 or (deadline is not None and time.monotonic() > deadline):
                return total

    def run_forever(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; the batch in flight is always finished first."""
        log.info("dispatcher.started")
        while not stop.is_set():
            try:
                step = self.step()
            except Exception:
                log.exception("dispatcher.step_failed; trying again shortly")
                stop.wait(IDLE_POLL_SECONDS)
                continue
            if step.moved == 0:
                stop.wait(IDLE_POLL_SECONDS)
        log.info("dispatcher.stopped")

    def step(self) -> DispatchStats:
        """One pass: expire what can no longer be sent, then one batch per account with due events."""
        stats = DispatchStats()
        stats.expired += self._expire_stale()
        for waba_id in self._accounts_with_due_events():
            stats.add(self._dispatch_account(waba_id))
        return stats

    # -- state changes --------------------------------------------------------------------------

    def _expire_stale(self) -> int:
        now = utcnow()
        limit = now - MAX_EVENT_AGE + SEND_MARGIN
        with self.db.transaction() as session:
            result = session.execute(
                update(Conversion)
                .where(_due(now), Conversion.event_time < limit)
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
        expired = result.rowcount or 0
        if expired:
            CONVERSION_EVENTS.labels(outcome="expired").inc(expired)
            log.warning("conversion.expired count=%s reason=7-day limit", expired)
        return expired

    def _accounts_with_due_events(self) -> list[str]:
        now = utcnow()
        with self.db.transaction() as session:
            rows = session.execute(
                select(Conversion.waba_id)
                .join(Account, Account.waba_id == Conversion.waba_id)
                .where(
                    _due(now),
                    or_(Account.status == Account.ACTIVE, Account.probe_at <= now),
                )
                .distinct()
            )
            return [r[0] for r in rows]

    def _dispatch_account(self, waba_id: str) -> DispatchStats:
        stats = DispatchStats()
        with self.db.transaction() as session:
            account = registry.get_account(session, waba_id)
            if account is None:
                return stats
            creds = registry.credentials(account, self.settings)
            problem = self._cannot_send(session, account, creds)
            if problem:
                stats.held = self._hold(session, waba_id, problem)
                return stats
            probing = account.status == Account.PAUSED
            if creds.dataset_id is None:
                creds = self._provision(session, account, creds)
                if creds.dataset_id is None:
                    stats.held = self._hold(
                        session,
                        waba_id,
                        f"held: WhatsApp Business Account {waba_id} has no dataset; run "
                        f"`waconv provision-dataset --waba-id {waba_id}`",
                    )
                    return stats
            claimed = self._claim(session, waba_id, 1 if probing else self.batch_size)
        if not claimed.rows:
            return stats
        self._deliver(creds, claimed, claimed.rows, stats, probing=probing)
        return stats

    def _cannot_send(self, session: Session, account: Account, creds: Credentials) -> str | None:
        if creds.token is None:
            return (
                f"held: no access token for WhatsApp Business Account {account.waba_id}; run "
                f"`waconv accounts set-token --waba-id {account.waba_id}` or set "
                "WACONV_ACCESS_TOKEN"
            )
        return None

    def _provision(self, session: Session, account: Account, creds: Credentials) -> Credentials:
        """A WABA without a dataset gets one once, automatically, when the token allows it."""
        if account.dataset_provision_tried_at is not None:
            return creds
        account.dataset_provision_tried_at = utcnow()
        assert creds.token is not None
        try:
            dataset_id = self.graph.create_dataset(account.waba_id, creds.token)
        except GraphError as err:
            GRAPH_REQUESTS.labels(endpoint="dataset", outcome="error").inc()
            log.error(
                "account.provision_failed waba_id=%s reason=%s",
                account.waba_id,
                operator_message(err, waba_id=account.waba_id, action="create the dataset"),
            )
            return creds
        GRAPH_REQUESTS.labels(endpoint="dataset", outcome="ok").inc()
        account.dataset_id = dataset_id
        log.info("account.dataset_provisioned waba_id=%s dataset_id=%s", account.waba_id, dataset_id)
        return registry.credentials(account, self.settings)

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
        held = result.rowcount or 0
        if held:
            CONVERSION_EVENTS.labels(outcome="held").inc(held)
            log.warning("conversion.held waba_id=%s count=%s reason=%s", waba_id, held, reason)
        return held

    def _claim(self, session: Session, waba_id: str, limit: int) -> Claimed:
        now = utcnow()
        query = (
            select(Conversion.id)
            .where(Conversion.waba_id == waba_id, _due(now))
            .order_by(Conversion.next_attempt_at, Conversion.id)
            .limit(limit)
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query))
        token = secrets.token_hex(8)
        leased_until = now + LEASE
        if not ids:
            return Claimed(token, leased_until, [])
        rows = session.execute(
            update(Conversion)
            .where(Conversion.id.in_(ids))
            .values(
                status=Conversion.SENDING,
                leased_until=leased_until,
                lease_token=token,
                attempts=Conversion.attempts + 1,
            )
            .returning(*_CLAIM_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        claimed = [dict(r._mapping) for r in rows]
        claimed.sort(key=lambda r: r["id"])
        return Claimed(token, leased_until, claimed)

    # -- sending ----------------------------------------------------------------------------------

    def _deliver(
        self,
        creds: Credentials,
        claimed: Claimed,
        rows: Sequence[dict[str, Any]],
        stats: DispatchStats,
        *,
        probing: bool = False,
    ) -> bool:
        """Send ``rows``; split on an invalid event. False when the account must stop."""
        self._keep_lease(claimed)
        assert creds.token is not None and creds.dataset_id is not None
        events = [
            build_meta_event(
                event_name=r["event_name"],
                event_time=r["event_time"],
                event_id=r["event_id"],
                waba_id=creds.waba_id,
                ctwa_clid=r["ctwa_clid"],
                custom_data=r["custom_data"],
                extra=r["extra"],
                ldu=creds.ldu,
                ldu_country=creds.ldu_country,
                ldu_state=creds.ldu_state,
            )
            for r in rows
        ]
        stats.requests += 1
        try:
            self.graph.send_events(
                creds.dataset_id,
                creds.token,
                events,
                partner_agent=creds.partner_agent,
                test_event_code=self.settings.test_event_code or None,
            )
        except GraphError as err:
            disposition = classify(err)
            GRAPH_REQUESTS.labels(endpoint="events", outcome=disposition.name.lower()).inc()
            if disposition is Disposition.INVALID and len(rows) > 1:
                middle = len(rows) // 2
                log.info(
                    "conversion.batch_rejected size=%s splitting; meta=%s", len(rows), err.code_label
                )
                if not self._deliver(creds, claimed, rows[:middle], stats):
                    return False
                return self._deliver(creds, claimed, rows[middle:], stats)
            if disposition is Disposition.INVALID:
                self._record_failed(claimed, rows, err, creds)
                stats.failed += len(rows)
            elif disposition is Disposition.ACCOUNT:
                self._record_account_problem(claimed, rows, err, creds, stats)
                return False
            else:
                retried, expired = self._record_retry(claimed, rows, err, creds)
                stats.retried += retried
                stats.expired += expired
            return True
        GRAPH_REQUESTS.labels(endpoint="events", outcome="ok").inc()
        self._record_sent(claimed, rows, creds, resumed=probing)
        stats.sent += len(rows)
        return True

    def _keep_lease(self, claimed: Claimed) -> None:
        """Extend the lease before a call that could outlive it (splits make several calls)."""
        now = utcnow()
        needed = timedelta(seconds=self.settings.graph_timeout_seconds + 5)
        if claimed.leased_until - now >= needed:
            return
        claimed.leased_until = now + max(LEASE, needed)
        with self.db.transaction() as session:
            session.execute(
                update(Conversion)
                .where(Conversion.lease_token == claimed.token)
                .values(leased_until=claimed.leased_until)
                .execution_options(synchronize_session=False)
            )

    def _ours(self, claimed: Claimed, rows: Sequence[dict[str, Any]]) -> Any:
        return and_(
            Conversion.id.in_([r["id"] for r in rows]), Conversion.lease_token == claimed.token
        )

    def _record_sent(
        self,
        claimed: Claimed,
        rows: Sequence[dict[str, Any]],
        creds: Credentials,
        *,
        resumed: bool,
    ) -> None:
        now = utcnow()
        with self.db.transaction() as session:
            session.execute(
                update(Conversion)
                .where(self._ours(claimed, rows))
                .values(
                    status=Conversion.SENT,
                    sent_at=now,
                    dataset_id=creds.dataset_id,
                    leased_until=None,
                    lease_token=None,
                    last_error=None,
                )
                .execution_options(synchronize_session=False)
            )
            if resumed:
                account = registry.get_account(session, creds.waba_id)
                if account is not None:
                    registry.resume(account, "Meta accepted events again")
        CONVERSION_EVENTS.labels(outcome="sent").inc(len(rows))
        log.info("conversion.sent count=%s dataset_id=%s", len(rows), creds.dataset_id)

    def _error_values(self, err: GraphError, creds: Credentials, sentence: str) -> dict[str, Any]:
        return {
            "last_error": sentence,
            "last_error_code": err.code,
            "last_error_subcode": err.subcode,
            "last_error_title": err.user_title or err.type,
            "last_error_message": err.user_msg or err.message,
            "last_error_fbtrace_id": err.fbtrace_id,
            "leased_until": None,
            "lease_token": None,
        }

    def _record_failed(
        self,
        claimed: Claimed,
        rows: Sequence[dict[str, Any]],
        err: GraphError,
        creds: Credentials,
    ) -> None:
        sentence = operator_message(err, waba_id=creds.waba_id)
        with self.db.transaction() as session:
            session.execute(
                update(Conversion)
                .where(self._ours(claimed, rows))
                .values(status=Conversion.FAILED, **self._error_values(err, creds, sentence))
                .execution_options(synchronize_session=False)
            )
        CONVERSION_EVENTS.labels(outcome="failed").inc(len(rows))
        log.error(
            "conversion.failed event_ids=%s reason=%s",
            ",".join(r["event_id"] for r in rows[:10]),
            sentence,
        )

    def _record_retry(
        self,
        claimed: Claimed,
        rows: Sequence[dict[str, Any]],
        err: GraphError,
        creds: Credentials,
    ) -> tuple[int, int]:
        """Back off each event; one whose next try would cross the 7-day limit expires now."""
        now = utcnow()
        sentence = operator_message(err, waba_id=creds.waba_id)
        base = self.settings.retry_base_seconds
        retried = expired = 0
        with self.db.transaction() as session:
            # Rows of one batch share attempts in practice; group to keep updates few.
            by_attempts: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                by_attempts.setdefault(r["attempts"] + 1, []).append(r)
            for attempts, group in by_attempts.items():
                next_at = now + backoff(attempts, base)
                keep = [r for r in group if next_at + SEND_MARGIN < r["event_time"] + MAX_EVENT_AGE]
                late = [r for r in group if r not in keep]
                values = self._error_values(err, creds, f"will retry: {sentence}")
                if keep:
                    session.execute(
                        update(Conversion)
                        .where(self._ours(claimed, keep))
                        .values(status=Conversion.PENDING, next_attempt_at=next_at, **values)
                        .execution_options(synchronize_session=False)
                    )
                    retried += len(keep)
                if late:
                    values["last_error"] = (
                        "expired: Meta's 7-day limit on event_time would pass before the next "
                        f"attempt; last error: {sentence}"
                    )
                    session.execute(
                        update(Conversion)
                        .where(self._ours(claimed, late))
                        .values(status=Conversion.EXPIRED, **values)
                        .execution_options(synchronize_session=False)
                    )
                    expired += len(late)
        if retried:
            CONVERSION_EVENTS.labels(outcome="retry").inc(retried)
        if expired:
            CONVERSION_EVENTS.labels(outcome="expired").inc(expired)
        log.warning(
            "conversion.deliver.retry count=%s expired=%s reason=%s", retried, expired, sentence
        )
        return retried, expired

    def _record_account_problem(
        self,
        claimed: Claimed,
        rows: Sequence[dict[str, Any]],
        err: GraphError,
        creds: Credentials,
        stats: DispatchStats,
    ) -> None:
        """Pause the account; every event of the claim still leased to us goes back to waiting,
        its attempt not counted (the events were never at fault)."""
        sentence = operator_message(err, waba_id=creds.waba_id)
        with self.db.transaction() as session:
            account = registry.get_account(session, creds.waba_id)
            if account is not None and registry.pause(account, sentence):
                stats.paused_accounts.append(creds.waba_id)
            values = self._error_values(err, creds, f"held: account paused: {sentence}")
            released = session.execute(
                update(Conversion)
                .where(Conversion.lease_token == claimed.token)
                .values(
                    status=Conversion.PENDING,
                    attempts=Conversion.attempts - 1,
                    next_attempt_at=utcnow(),
                    **values,
                )
                .execution_options(synchronize_session=False)
            )
        count = released.rowcount or 0
        stats.held += count
        CONVERSION_EVENTS.labels(outcome="held").inc(count)
