"""Alembic, driven from code: `waconv db upgrade`, the test suite, and the schema check."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _migrations_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def alembic_config(engine: Engine) -> Config:
    cfg = _migrations_config()
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def check(engine: Engine) -> None:
    """Raise when the models and the migrations disagree (alembic check)."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)


@functools.cache
def _revisions() -> tuple[str, tuple[str, ...]]:
    """The head of the migrations shipped with this code, and every revision they know."""
    script = ScriptDirectory.from_config(_migrations_config())
    head = script.get_current_head()
    assert head is not None, "migrations/ has one head"
    return head, tuple(r.revision for r in script.walk_revisions())


def behind(conn: Connection) -> str | None:
    """Why the database's schema is older than this code needs (never migrated, or at an
    earlier revision), or None. A revision this code does not know is newer (a deploy
    migrated ahead of this process) and is not reported."""
    head, known = _revisions()
    try:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # no such table
        current = None
    if current is None:
        return "the database was never migrated: run `waconv db upgrade`"
    if current != head and current in known:
        return (
            f"the database schema is at {current}, this code needs {head}: run `waconv db upgrade`"
        )
    return None
