"""The one seam for "now": every time rule reads the clock here, so freezegun can drive it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_unix(seconds: int | float | str) -> datetime:
    return datetime.fromtimestamp(int(float(seconds)), UTC)


def to_unix(moment: datetime) -> int:
    return int(moment.timestamp())


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the admin API answers."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
