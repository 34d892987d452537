"""Cost of the request log: ``record_request`` of a 1,000-event request, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.requestlog [--requests 20] [--postgres URL]

A fresh database per backend (SQLite in a temporary directory; PostgreSQL at ``--postgres``,
default ``WACONV_TEST_POSTGRES_URL``, whose tables are dropped first), 1,000 conversions, then
``--requests`` requests of those 1,000 events recorded one transaction each, as the dispatcher
does. Prints the median wall and CPU time per request, i.e. per 1,000 links.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta

from sqlalchemy import insert, text

from waconv import schema
from waconv.clock import utcnow
from waconv.conversions.requestlog import RequestRecord, record_request
from waconv.db import Base, Database
from waconv.models import Account, Conversion

WABA_ID = "102290129340398"
EVENTS = 1000  # Meta's largest request


def _fill(db: Database) -> list[int]:
    now = utcnow()
    with db.transaction() as session:
        session.execute(insert(Account).values(waba_id=WABA_ID, status="active"))
        rows = [
            {
                "event_id": f"bench-{n}",
                "waba_id": WABA_ID,
                "ctwa_clid": f"ARclid-{n}",
                "event_name": "Purchase",
                "event_time": now - timedelta(hours=1),
                "source": "admin",
                "status": "sent",
                "attempts": 1,
                "next_attempt_at": now,
            }
            for n in range(EVENTS)
        ]
        session.execute(insert(Conversion), rows)
        return list(session.scalars(text("SELECT id FROM conversions ORDER BY id")))


def measure(url: str, requests: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of recording one 1,000-event request, in its own transaction."""
    db = Database(url)
    try:
        if db.dialect == "postgresql":
            with db.engine.begin() as conn:
                Base.metadata.drop_all(conn)
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        schema.upgrade(db.engine)
        ids = _fill(db)
        walls, cpus = [], []
        for _ in range(requests):
            record = RequestRecord(
                at=utcnow(),
                waba_id=WABA_ID,
                destination="graph",
                events=EVENTS,
                bytes=300_000,
                duration_ms=120,
                http_status=200,
                events_received=EVENTS,
                fbtrace_id="AbCdEf123",
                messages=[],
            )
            wall, cpu = time.perf_counter(), time.process_time()
            with db.transaction() as session:
                record_request(session, record, ids)
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        return statistics.median(walls), statistics.median(cpus)
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--postgres", default=os.environ.get("WACONV_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/bench.sqlite3"}
        if args.postgres:
            urls["postgresql"] = args.postgres
        for backend, url in urls.items():
            wall, cpu = measure(url, args.requests)
            print(
                f"{backend}: record_request of {EVENTS} events: {wall:.2f} ms wall, "
                f"{cpu:.2f} ms CPU (median of {args.requests})"
            )


if __name__ == "__main__":
    main()
