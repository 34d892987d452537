"""Fleet: many accounts with a few events each, against a Graph API that takes its time.

``python -m bench.fleet [--accounts 500] [--events 4] [--latency 0.3] [--concurrency 16]``
fills one outbox (SQLite) with ``accounts x events`` pending conversions, each account with its
own dataset, and times ``Dispatcher.run_once()`` against a loopback FakeGraph that answers every
events request after ``latency`` seconds. One request per account, so a serial dispatcher
needs ``accounts x latency``; ``concurrency`` requests in flight at best
``accounts x latency / concurrency``. It checks that every event was accepted exactly once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from bench import common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet")
    p.add_argument("--accounts", type=int, default=500)
    p.add_argument("--events", type=int, default=4, help="per account")
    p.add_argument("--latency", type=float, default=0.3, help="seconds per events request")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)

    from waconv.accounts import registry
    from waconv.clock import utcnow
    from waconv.config import load_settings
    from waconv.conversions.dispatcher import Dispatcher
    from waconv.graph.fake import DEFAULT_TOKEN, FakeGraph
    from waconv.models import Conversion
    from waconv.services import Services

    workdir = Path(tempfile.mkdtemp(prefix="waconv-fleet-"))
    url = common.fresh_sqlite(workdir, "fleet")
    common.migrate(url)
    with FakeGraph() as fake:
        fake.latency = args.latency
        settings = load_settings(
            environ={},
            overrides={
                "database_url": url,
                "access_token": DEFAULT_TOKEN,
                "graph_url": fake.url,
                "secret_key": common.SECRET_KEY,
                "rules_file": str(common.REPO / "config" / "rules.toml"),
                "dispatch_concurrency": args.concurrency,
            },
            dev_secrets_file=workdir / "none.json",
        )
        services = Services.build(settings)
        try:
            now = utcnow()
            rows = []
            with services.db.transaction() as session:
                for a in range(args.accounts):
                    waba_id = f"5{a:014d}"
                    registry.get_or_create_account(session, waba_id).dataset_id = f"6{a:014d}"
                    for e in range(args.events):
                        rows.append(
                            {
                                "event_id": f"fleet-{a}-{e}",
                                "waba_id": waba_id,
                                "ctwa_clid": f"ARclid-{a}-{e}",
                                "event_name": "LeadSubmitted",
                                "event_time": now - timedelta(hours=1),
                                "source": "admin",
                                "status": Conversion.PENDING,
                                "attempts": 0,
                                "next_attempt_at": now,
                            }
                        )
                session.flush()
                session.execute(insert(Conversion), rows)
            start = time.perf_counter()
            stats = Dispatcher(services).run_once()
            seconds = time.perf_counter() - start
        finally:
            services.close()
        accepted = fake.accepted_event_ids()
        once = len(accepted) == len(rows) and set(accepted.values()) == {1}
        serial = args.accounts * args.latency
        ideal = serial / args.concurrency
        print(
            f"fleet: {args.accounts} accounts x {args.events} events, latency {args.latency} s, "
            f"concurrency {args.concurrency}: {seconds:.1f} s (sent {stats.sent}, each once: "
            f"{once}); serial would take {serial:.1f} s ({serial / seconds:.1f}x slower), "
            f"ideal {ideal:.1f} s ({seconds / ideal:.2f}x ideal); max in flight "
            f"{fake.max_in_flight}"
        )
    return 0 if once else 1


if __name__ == "__main__":
    raise SystemExit(main())
