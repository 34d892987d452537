"""What a pywa user would write: pywa on Flask, a handler that keeps the latest ad click of each
conversation with SQLAlchemy.

``gunicorn 'bench.apps.pywa_app:create_app()'`` with ``BENCH_DATABASE_URL`` set and the table
created beforehand (:func:`create_schema`). pywa checks ``X-Hub-Signature-256``
(``validate_updates=True``), parses the update into its types and calls the handler; the handler
upserts one row per (business number, user).

On SQLite it gets the same pragmas as waconv (WAL, synchronous=NORMAL, a busy timeout), so the
comparison measures the code, not the journal mode.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from flask import Flask, Response
from pywa import WhatsApp, types
from sqlalchemy import DateTime, String, UniqueConstraint, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class AdClick(Base):
    __tablename__ = "pywa_ad_clicks"
    __table_args__ = (UniqueConstraint("phone_number_id", "wa_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_number_id: Mapped[str] = mapped_column(String(32))
    wa_id: Mapped[str] = mapped_column(String(64))
    ctwa_clid: Mapped[str] = mapped_column(String(512))
    source_id: Mapped[str | None] = mapped_column(String(64))
    wamid: Mapped[str] = mapped_column(String(255))
    clicked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=5, max_overflow=5)


def create_schema(url: str) -> None:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()


def create_app() -> Flask:
    engine = make_engine(os.environ["BENCH_DATABASE_URL"])
    Session = sessionmaker(engine)
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    app = Flask(__name__)
    wa = WhatsApp(
        server=app,
        webhook_endpoint="/webhook",
        verify_token=os.environ["WACONV_VERIFY_TOKEN"],
        app_secret=os.environ["WACONV_APP_SECRET"],
        validate_updates=True,
    )

    @wa.on_message()  # type: ignore[misc]
    def store_click(_: WhatsApp, msg: types.Message) -> None:
        referral = msg.referral
        if referral is None or not referral.ctwa_clid:
            return
        values = {
            "phone_number_id": msg.metadata.phone_number_id,
            "wa_id": msg.from_user.wa_id,
            "ctwa_clid": referral.ctwa_clid,
            "source_id": referral.source_id,
            "wamid": msg.id,
            "clicked_at": msg.timestamp,
        }
        stmt = insert(AdClick).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["phone_number_id", "wa_id"],
            set_={k: stmt.excluded[k] for k in ("ctwa_clid", "source_id", "wamid", "clicked_at")},
        )
        with Session.begin() as session:
            session.execute(stmt)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    return app
