"""The models and the migrations describe the same schema, on every backend."""

from __future__ import annotations

from sqlalchemy import inspect

from waconv import schema
from waconv.db import Base, make_engine


def test_models_match_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        schema.check(engine)  # raises when autogenerate would find a difference
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_downgrade_then_upgrade(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        schema.upgrade(engine)
        schema.downgrade(engine, "base")
        assert "conversions" not in inspect(engine).get_table_names()
        schema.upgrade(engine)
        assert "conversions" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
