"""The outbox's schedule policy: when a failed event is tried again, and when an event is
too old to send."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

from waconv.conversions.events import MAX_EVENT_AGE

MAX_BACKOFF = timedelta(minutes=15)
JITTER = 0.2  # ±20 % so that retries of many events do not arrive in lock-step
# An event is not sent when it would reach Meta this close to the 7-day limit.
SEND_MARGIN = timedelta(minutes=1)


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


def unix_limit(now: datetime) -> int:
    """``send_limit`` in Unix seconds, for a claimed event's ``event_unix`` (whole seconds,
    truncated): rounded up, so that an event in the limit's own second is too old. It errs
    by under a second, towards never sending late."""
    return math.ceil(send_limit(now).timestamp())
