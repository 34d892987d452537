"""The ads report's update trigger on conversions in two: one for a change of outcome, one for
a change of key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 09:00:00

0007's one ``conversions_stats_update`` trigger ran its WHEN test for every row of every
UPDATE: on SQLite that loads and compares six columns of the old and the new row, custom_data
(the event's JSON) among them, 0.65 ms of CPU per 1,000 events marked sent (bench/PROFILE.md,
"Dispatch"), where the test is always false (pending and sent are both credited). Now:

- ``conversions_stats_status`` (``UPDATE OF status``) runs when the outcome's class changes
  (credited: pending or sent; not sent: failed or expired), and moves the row's count;
- ``conversions_stats_key`` (``UPDATE OF`` the key's columns) runs when the class did not
  change but the key did (an event renamed, a click or a value corrected).

An UPDATE that sets none of the key's columns, as the dispatcher's outcomes do, never starts
the second. The status test first rules out pending -> sent (the dispatcher's every UPDATE) with
two comparisons: the four class tests cost 0.2 ms of CPU per 1,000 rows more. What is left is
SQLite calling the trigger for each row, 0.3 ms per 1,000 (measured with a trigger WHEN 0).
The bodies are 0007's, unchanged.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COLUMNS = "event_name, ctwa_clid, custom_data, waba_id"


def _rollup() -> ModuleType:
    """0007, whose trigger bodies and tests these are (a revision file is not importable by
    name)."""
    path = next(Path(__file__).parent.glob("0007_*.py"))
    spec = importlib.util.spec_from_file_location("waconv_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tests(rollup: ModuleType, postgresql: bool) -> tuple[str, str, str]:
    """The class test, the key test, and 0007's test that is either, in the dialect."""
    distinct = " IS DISTINCT FROM " if postgresql else " IS NOT "
    classes = (
        "(OLD.status IN {c}){d}(NEW.status IN {c}) OR (OLD.status IN {n}){d}(NEW.status IN {n})"
    ).format(c=rollup.CREDITED, n="('failed', 'expired')", d=distinct)
    key = " OR ".join(f"OLD.{c}{distinct}NEW.{c}" for c in KEY_COLUMNS.split(", "))
    either = rollup._CHANGED.replace(" IS NOT ", distinct)
    sent = "NOT (OLD.status = 'pending' AND NEW.status = 'sent')"
    return f"{sent} AND ({classes})", f"NOT ({classes}) AND ({key})", either


def _drop(*names: str, postgresql: bool) -> None:
    for name in names:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON conversions" if postgresql else ""))


def _create(name: str, columns: str, when: str, rollup: ModuleType, postgresql: bool) -> None:
    head = f"CREATE TRIGGER {name} AFTER UPDATE{columns} ON conversions"
    if postgresql:
        op.execute(f"{head} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION waconv_conversion_stats()")
    else:
        op.execute(f"{head} WHEN {when} BEGIN {rollup._sqlite_remove()} {rollup._sqlite_add()} END")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    rollup = _rollup()
    classes, key, _ = _tests(rollup, postgresql)
    _drop("conversions_stats_update", postgresql=postgresql)
    _create("conversions_stats_status", " OF status", classes, rollup, postgresql)
    _create("conversions_stats_key", f" OF {KEY_COLUMNS}", key, rollup, postgresql)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    rollup = _rollup()
    _, _, either = _tests(rollup, postgresql)
    _drop("conversions_stats_status", "conversions_stats_key", postgresql=postgresql)
    _create("conversions_stats_update", "", either, rollup, postgresql)
