"""Fixtures of the dispatcher tests: a frozen clock, an account with a dataset, a dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg  # noqa: F401 - its C extension must load before freezegun swaps datetime
import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from tests.dispatch.helpers import setup_account
from waconv.conversions.dispatcher import Dispatcher
from waconv.services import Services

# A fixed "now" for the frozen-clock tests; Meta's 7-day window moves with it (fake included).
START = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def freezer() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def ready(services: Services) -> Services:
    """The default services with the test WABA's account and its dataset."""
    setup_account(services)
    return services


@pytest.fixture
def dispatcher(ready: Services) -> Dispatcher:
    return Dispatcher(ready)
