"""The dispatcher's two statements per batch, the claim (a read) and marking it sent (its one
write), use the indexes they were written for."""

from __future__ import annotations

import pytest

from tests.conftest import WABA_ID
from tests.dispatch.helpers import enqueue_many
from waconv.clock import utcnow
from waconv.conversions.queue import CLAIM_STATEMENTS, SENT_STATEMENTS, id_list
from waconv.db import time_binder
from waconv.services import Services


def _plan(services: Services, statement: str, parameters: dict[str, object]) -> str:
    explain = "EXPLAIN QUERY PLAN " if services.db.dialect == "sqlite" else "EXPLAIN "
    with services.db.autocommit_cursor(write=False) as cursor:
        cursor.execute(explain + statement, parameters)
        return "\n".join(
            str(row[-1] if services.db.dialect == "sqlite" else row[0]) for row in cursor
        )


@pytest.mark.sqlite_only  # PostgreSQL chooses by its statistics
@pytest.mark.parametrize("after", [False, True])
def test_the_claim_reads_the_partial_due_index_on_sqlite(ready: Services, after: bool) -> None:
    """SQLite uses a partial index only for a query that repeats its ``status = 'pending'``
    (with ``status IN ('pending', 'sending')`` the claim of 0.2 could not use one)."""
    enqueue_many(ready, 3)
    bind = time_binder(ready.db.engine.dialect)
    parameters: dict[str, object] = {
        "waba_id": WABA_ID,
        "now": bind(utcnow()),
        "oldest": bind(utcnow()),
        "limit": 1000,
        "per_event": 400,
        "max_bytes": 3 * 1024 * 1024,
        "after_due": bind(utcnow()),
        "after_id": 0,
    }
    if not after:
        del parameters["after_due"], parameters["after_id"]
    plan = _plan(ready, CLAIM_STATEMENTS["sqlite", after], parameters)
    assert "USING INDEX ix_conversions_account_due" in plan, plan


def test_marking_sent_looks_the_batch_up_by_id(ready: Services) -> None:
    """Not through the pending-only indexes: before a new table's first ANALYZE, PostgreSQL
    chose them and tested every pending event against the batch's ids."""
    enqueue_many(ready, 3)
    parameters = {
        "now": time_binder(ready.db.engine.dialect)(utcnow()),
        "dataset_id": "1",
        "ids": id_list([1, 2, 3], ready.db.dialect),
    }
    plan = _plan(ready, SENT_STATEMENTS[ready.db.dialect], parameters)
    assert "ix_conversions_due" not in plan and "ix_conversions_account_due" not in plan, plan
