"""Fixtures of the multi-process tests: PostgreSQL only, and a fake Graph API that traces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.production.helpers import TracingFakeGraph

# The dispatchers' Graph timeout in these tests: the fake's "timeout" faults outlast it.
GRAPH_TIMEOUT_SECONDS = 1.0


@pytest.fixture
def pg_url(db_url: str) -> str:
    """The test PostgreSQL; these tests race processes on SKIP LOCKED and row locks, which the
    embedded SQLite (one writer at a time) does not have."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    return db_url


@pytest.fixture
def fake_graph() -> Iterator[TracingFakeGraph]:
    with TracingFakeGraph(late_timeout=GRAPH_TIMEOUT_SECONDS) as fake:
        yield fake
