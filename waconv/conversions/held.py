"""Held events: pending events of an account that cannot send (no token, no dataset, no
Gateway settings, paused), parked by the dispatcher with the reason as their ``last_error``.

This module alone knows how a held event is told from one backing off: the dispatcher
writes reasons with :func:`held`, the registry releases them with :func:`is_held`, and
``waconv dispatch --once`` reads them back with :func:`held_reason`.
"""

from __future__ import annotations

from typing import Any

from waconv.models import Conversion

_MARK = "held:"


def held(reason: str) -> str:
    """The ``last_error`` of an event held for ``reason``."""
    return f"{_MARK} {reason}"


def held_reason(last_error: str | None) -> str | None:
    """Why an event was held, from its ``last_error``; None when it is not held."""
    if last_error is None or not last_error.startswith(_MARK):
        return None
    return last_error.removeprefix(_MARK).strip()


def is_held() -> Any:
    """SQL: the conversion is held (its ``last_error`` says so)."""
    return Conversion.last_error.startswith(_MARK, autoescape=True)
