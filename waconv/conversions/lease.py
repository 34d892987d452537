"""The account lease: while a dispatcher holds an account (``accounts.dispatch_token`` until
``dispatch_leased_until``), nobody else sends its events.

Taken at the start of the account's turn, extended before any request the lease would not
outlast, given back at the end of the turn. A dispatcher that dies loses its accounts when
their lease lapses.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.config import LEASE_SLACK_SECONDS
from waconv.conversions.queue import lease_free, rowcount
from waconv.db import Database
from waconv.models import Account

log = logging.getLogger(__name__)

# The default of WACONV_LEASE_SECONDS (the contract: events leased by a dispatcher that died
# are due again within 60 seconds).
LEASE = timedelta(seconds=60)
# Before each request the lease must outlast the request timeout by this much, else it is
# extended first (a long split makes many requests under one claim).
LEASE_SLACK = timedelta(seconds=LEASE_SLACK_SECONDS)


@dataclass
class AccountLease:
    """A dispatcher's hold on one account: while it lasts, nobody else sends its events."""

    waba_id: str
    token: str
    until: datetime
    lost: bool = False  # another dispatcher took the account after the lease ran out
    throttled: bool = False  # Meta's rate limit holds the account: the turn ends


def take(session: Session, waba_id: str, duration: timedelta) -> AccountLease | None:
    """The account's lease for ``duration``, if no dispatcher holds it."""
    now = utcnow()
    token = secrets.token_hex(8)
    until = now + duration
    result = session.execute(
        update(Account)
        .where(Account.waba_id == waba_id, lease_free(now))
        .values(dispatch_token=token, dispatch_leased_until=until)
        .execution_options(synchronize_session=False)
    )
    return AccountLease(waba_id, token, until) if rowcount(result) else None


def update_held(db: Database, lease: AccountLease, **values: Any) -> bool:
    """Set ``values`` on the account if ``lease`` still holds it; whether it did."""
    with db.transaction() as session:
        result = session.execute(
            update(Account)
            .where(Account.waba_id == lease.waba_id, Account.dispatch_token == lease.token)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return rowcount(result) > 0


def give_back(db: Database, lease: AccountLease) -> None:
    """End of the turn: the account is free for any dispatcher (best effort: if this fails,
    the lease lapses)."""
    try:
        update_held(db, lease, dispatch_token=None, dispatch_leased_until=None)
    except Exception:
        log.exception("dispatcher.lease_release_failed waba_id=%s", lease.waba_id)


def outlasts(db: Database, lease: AccountLease, needed: timedelta, duration: timedelta) -> bool:
    """Whether ``lease`` holds the account for ``needed`` more, extended (to ``duration`` or
    ``needed``) when it would not. False when another dispatcher took the account after the
    lease ran out: then this one sends nothing more of it (now and for the rest of the turn),
    as sending the events again would make Meta count them twice."""
    if lease.lost:
        return False
    now = utcnow()
    if lease.until - now < needed:
        until = now + max(duration, needed)
        if not update_held(db, lease, dispatch_leased_until=until):
            lease.lost = True
            return False
        lease.until = until
    return True
