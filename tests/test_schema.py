"""The models and the migrations describe the same schema, on every backend."""

from __future__ import annotations

from sqlalchemy import inspect, text

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


def test_a_0_1_0_database_upgrades_in_place(db_url: str) -> None:
    """0002 on a database created by 0.1.0 (revision 0001): rows kept, column and indexes new."""
    engine = make_engine(db_url)
    try:
        schema.downgrade(engine, "0001")
        assert "pause_code" not in {c["name"] for c in inspect(engine).get_columns("accounts")}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO accounts (waba_id, status, created_at, updated_at)"
                    " VALUES ('1', 'paused', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                )
            )
        schema.upgrade(engine)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT waba_id, status, pause_code FROM accounts")).one()
            assert tuple(row) == ("1", "paused", None)
            if engine.dialect.name == "postgresql":
                predicates = (
                    conn.execute(
                        text(
                            "SELECT indexdef FROM pg_indexes WHERE tablename = 'conversions'"
                            " AND indexname IN ('ix_conversions_due', 'ix_conversions_account_due')"
                        )
                    )
                    .scalars()
                    .all()
                )
                assert len(predicates) == 1  # 0013 dropped ix_conversions_due
                assert all("WHERE" in p and "pending" in p for p in predicates)
        schema.check(engine)
    finally:
        engine.dispose()


def test_a_0_2_database_upgrades_in_place(db_url: str) -> None:
    """0003 on a database of 0.2 (revision 0002): an event a 0.2 dispatcher left ``sending`` is
    pending again, the per-event lease columns are gone, accounts carry the dispatch lease, and
    the due-event indexes hold pending events only, on every backend."""
    engine = make_engine(db_url)
    try:
        schema.downgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO accounts (waba_id, status, created_at, updated_at)"
                    " VALUES ('1', 'active', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO conversions (event_id, waba_id, ctwa_clid, event_name,"
                    " event_time, source, status, attempts, next_attempt_at, leased_until,"
                    " lease_token, created_at, updated_at) VALUES ('e1', '1', 'c', 'LeadSubmitted',"
                    " '2026-11-01 00:00:00', 'admin', 'sending', 1, '2026-11-01 00:00:00',"
                    " '2026-11-01 00:01:00', 'dead', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                )
            )
        schema.upgrade(engine)
        columns = {c["name"] for c in inspect(engine).get_columns("conversions")}
        assert not {"leased_until", "lease_token"} & columns
        account_columns = {c["name"] for c in inspect(engine).get_columns("accounts")}
        assert {"dispatch_token", "dispatch_leased_until"} <= account_columns
        with engine.connect() as conn:
            row = conn.execute(text("SELECT event_id, status, attempts FROM conversions")).one()
            assert tuple(row) == ("e1", "pending", 1)
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'conversions'"
                    " AND indexname IN ('ix_conversions_due', 'ix_conversions_account_due')"
                )
            else:
                query = (
                    "SELECT sql FROM sqlite_master WHERE type = 'index'"
                    " AND name IN ('ix_conversions_due', 'ix_conversions_account_due')"
                )
            definitions = conn.execute(text(query)).scalars().all()
        assert len(definitions) == 1  # 0013 dropped ix_conversions_due
        assert all("WHERE" in d and "'pending'" in d and "sending" not in d for d in definitions)
        schema.check(engine)
    finally:
        engine.dispose()
