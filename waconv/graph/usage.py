"""Meta's usage headers: how close the app and the business are to their rate limits.

``X-App-Usage: {"call_count": 28, "total_time": 25, "total_cputime": 25}`` (percent of the
app's limits) and ``X-Business-Use-Case-Usage: {"<business id>": [{"type": "ads_management",
"call_count": 95, "total_cputime": 20, "total_time": 20, "estimated_time_to_regain_access":
0}]}`` (percent of each business use case's limits; the wait in minutes once throttled).
A header that is missing or not in this shape reads as "nothing known".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

APP_USAGE_HEADER = "X-App-Usage"
BUSINESS_USAGE_HEADER = "X-Business-Use-Case-Usage"
_PERCENTS = ("call_count", "total_time", "total_cputime")
FULL = 100  # percent: Meta throttles calls from here on
# Meta's estimate is minutes; no wait past this is believed (a misread header must not hold
# an account for days).
MAX_REGAIN = timedelta(hours=24)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _percent(entry: Mapping[str, Any]) -> float | None:
    found = [n for n in (_number(entry.get(key)) for key in _PERCENTS) if n is not None]
    return max(found) if found else None


@dataclass(frozen=True)
class Usage:
    """What one answer's headers said; None where they said nothing."""

    app_percent: float | None = None  # the highest of X-App-Usage's percentages
    business_percent: float | None = None  # the highest over every business use case
    regain_after: timedelta | None = None  # Meta's longest estimated_time_to_regain_access

    @property
    def app_full(self) -> bool:
        return self.app_percent is not None and self.app_percent >= FULL

    @property
    def business_full(self) -> bool:
        return (self.business_percent is not None and self.business_percent >= FULL) or (
            self.regain_after is not None
        )

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Usage | None:
        """The usage the headers report (case-insensitive names), None without any."""
        app = _json(headers.get(APP_USAGE_HEADER))
        business = _json(headers.get(BUSINESS_USAGE_HEADER))
        if app is None and business is None:
            return None
        app_percent = _percent(app) if isinstance(app, Mapping) else None
        entries: list[Mapping[str, Any]] = []
        if isinstance(business, Mapping):
            for value in business.values():
                if isinstance(value, list):
                    entries += [e for e in value if isinstance(e, Mapping)]
        percents = [p for p in map(_percent, entries) if p is not None]
        minutes = [
            m
            for m in (_number(e.get("estimated_time_to_regain_access")) for e in entries)
            if m is not None and m > 0
        ]
        regain = min(timedelta(minutes=max(minutes)), MAX_REGAIN) if minutes else None
        return cls(app_percent, max(percents) if percents else None, regain)


def business_usage_header(business_id: str, *, percent: int = 0, regain_minutes: int = 0) -> str:
    """An ``X-Business-Use-Case-Usage`` value as Meta writes it (for the fake)."""
    entry = {
        "type": "ads_management",
        "call_count": percent,
        "total_cputime": percent,
        "total_time": percent,
        "estimated_time_to_regain_access": regain_minutes,
    }
    return json.dumps({business_id: [entry]})
