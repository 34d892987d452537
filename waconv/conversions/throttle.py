"""Meta's rate limits: they back off an account as a whole, or every account for the app's.

A rate-limit answer (codes 4, 17, 32, 341, 613, 80000-80099), or usage headers at 100 % on
any answer, throttle the account (``accounts.throttled_until``): no dispatcher takes its
turn until then, and the rest of the turn in progress is not sent. The app's limits (codes 4
and 341, ``X-App-Usage`` at 100 %) throttle every account, since they share the app.
How long: Meta's ``estimated_time_to_regain_access`` when it gives one, else the retry
backoff of the batch's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, true, update
from sqlalchemy.orm import Session

from waconv.graph.errors import APP_RATE_LIMIT_CODES, GraphError, is_rate_limit
from waconv.graph.usage import Usage
from waconv.models import Account

APP = "app"
ACCOUNT = "account"


@dataclass(frozen=True)
class Throttle:
    """A rate limit Meta reported: whose, why, and Meta's own estimate of how long."""

    scope: str  # APP or ACCOUNT
    reason: str
    after: timedelta | None = None  # None: Meta gave no estimate

    @property
    def app_wide(self) -> bool:
        return self.scope == APP


def of_error(err: GraphError) -> Throttle | None:
    """The throttle a failed Graph call reports, if it was a rate limit."""
    if not is_rate_limit(err):
        return None
    usage = err.usage or Usage()
    app = err.code in APP_RATE_LIMIT_CODES or usage.app_full
    whose = "the app's" if app else "the account's"
    return Throttle(
        APP if app else ACCOUNT,
        f"Meta's rate limit ({whose}, code {err.code_label})",
        usage.regain_after,
    )


def of_usage(usage: Usage | None) -> Throttle | None:
    """The throttle an accepted call's usage headers announce (a limit reached)."""
    if usage is None:
        return None
    if usage.app_full:
        return Throttle(APP, "Meta's usage headers: the app reached its rate limit", None)
    if usage.business_full:
        return Throttle(
            ACCOUNT, "Meta's usage headers: the account reached its rate limit", usage.regain_after
        )
    return None


def unthrottled(now: datetime) -> Any:
    """Accounts no rate limit holds now (SQL)."""
    return or_(Account.throttled_until.is_(None), Account.throttled_until <= now)


def record(session: Session, waba_id: str, throttle: Throttle, until: datetime) -> None:
    """Hold the account (every account, for the app's limit) until ``until``; a longer hold
    already recorded stands."""
    which = true() if throttle.app_wide else Account.waba_id == waba_id
    session.execute(
        update(Account)
        .where(which, or_(Account.throttled_until.is_(None), Account.throttled_until < until))
        .values(throttled_until=until, throttle_reason=throttle.reason)
        .execution_options(synchronize_session=False)
    )
