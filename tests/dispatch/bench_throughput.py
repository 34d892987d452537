"""Rough throughput of ``Dispatcher.run_once``: outbox -> loopback FakeGraph -> state updates.

Run by hand (not collected by pytest)::

    python -m tests.dispatch.bench_throughput [--events 20000] [--postgres URL] [--profile]
        [--fake-process] [--repeat N]

Prints events/s for SQLite (a temporary file) and, with ``--postgres``, for that database
(its tables are dropped and rebuilt: give it a database of its own, e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/waconv_dispatch_bench). ``--fake-process`` runs the
fake Graph API in a process of its own, as Meta would be: its JSON parsing then does not compete
with the dispatcher for this interpreter's GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, text

from waconv import schema
from waconv.clock import utcnow
from waconv.config import load_settings
from waconv.conversions.dispatcher import Dispatcher
from waconv.db import Base, make_engine
from waconv.graph.fake import FakeGraph
from waconv.models import Account, Conversion
from waconv.services import Services

WABA_ID = "102290129340398"
DATASET_ID = "987654321012345"
INSERT_CHUNK = 5000


def fill(services: Services, n: int) -> None:
    now = utcnow()
    moment = now - timedelta(hours=1)
    rows = [
        {
            "event_id": f"bench-{i:08d}",
            "waba_id": WABA_ID,
            "ctwa_clid": f"ARclid-bench-{i:08d}",
            "event_name": "Purchase",
            "event_time": moment,
            "custom_data": {"value": 23.97, "currency": "USD"},
            "source": "admin",
            "status": Conversion.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
        }
        for i in range(n)
    ]
    with services.db.transaction() as session:
        session.execute(insert(Account).values(waba_id=WABA_ID, dataset_id=DATASET_ID))
        for start in range(0, n, INSERT_CHUNK):
            session.execute(insert(Conversion), rows[start : start + INSERT_CHUNK])


@contextlib.contextmanager
def fake_graph(in_process: bool) -> Iterator[str]:
    """The fake's base URL: a FakeGraph thread here, or a child process serving one."""
    if in_process:
        with FakeGraph() as fake:
            yield fake.url
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.dispatch.bench_throughput", "--serve-fake"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the child stops when its stdin closes
        child.wait(10)


def serve_fake() -> None:
    with FakeGraph() as fake:
        print(fake.url, flush=True)
        sys.stdin.read()


def run(url: str, n: int, *, profile: bool, in_process: bool) -> float:
    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    schema.upgrade(engine)
    engine.dispose()
    with fake_graph(in_process) as graph_url, tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.toml"
        rules.write_text("")
        settings = load_settings(
            environ={},
            overrides={
                "database_url": url,
                "access_token": "test-token",
                "graph_url": graph_url,
                "rules_file": str(rules),
                "log_level": "WARNING",
            },
            dev_secrets_file=Path(tmp) / "none",
        )
        services = Services.build(settings)
        try:
            fill(services, n)
            dispatcher = Dispatcher(services)
            profiler = None
            if profile:
                from pyinstrument import Profiler

                profiler = Profiler()
                profiler.start()
            began, cpu = time.perf_counter(), time.process_time()
            stats = dispatcher.run_once()
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
            if profiler is not None:
                profiler.stop()
                print(profiler.output_text(unicode=True, color=False, show_all=False))
            assert stats.sent == n, stats
            assert stats.requests == -(-n // 1000), stats
        finally:
            services.close()
    print(f"  {n} events in {elapsed:.2f} s wall, {cpu:.2f} s CPU of this process")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--postgres", default="")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--fake-process", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake()
        return
    options = {"profile": args.profile, "in_process": not args.fake_process}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            rate = run(f"sqlite:///{tmp}/bench.sqlite3", args.events, **options)
            print(f"sqlite: {rate:,.0f} events/s")
        if args.postgres:
            rate = run(args.postgres, args.events, **options)
            print(f"postgresql: {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
