"""Many accounts at once, and a dispatcher's memory under large events.

``python -m bench fleet`` (part of ``make bench``) runs both; ``python -m bench.fleet`` runs the
fleet alone with its own sizes.

- **Fleet**: one outbox (SQLite) with ``accounts x events`` pending conversions, each account
  with its own dataset, and ``Dispatcher.run_once()`` timed against a loopback FakeGraph that
  answers every events request after ``latency`` seconds. One request per account, so a serial
  dispatcher needs ``accounts x latency``; ``concurrency`` requests in flight at best
  ``accounts x latency / concurrency``. Every event must be accepted exactly once.
- **Memory**: 1,000 pending events of 60 KB of ``custom_data`` each for one account, sent by
  ``waconv dispatch --once`` in a child process; its peak resident set (``VmHWM``) is
  compared with the same command's on an empty outbox.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench import common

BIG_EVENTS = 1_000
BIG_EVENT_BYTES = 60_000
MEMORY_TARGET_MB = 150
# The fleet: 500 accounts x 4 events, Meta answering in 300 ms, 16 in flight.
FULL = {"accounts": 500, "events": 4, "latency": 0.3, "concurrency": 16}
QUICK = {"accounts": 100, "events": 4, "latency": 0.3, "concurrency": 16}


@dataclass
class FleetResult:
    accounts: int
    events: int
    latency: float
    concurrency: int
    seconds: float
    sent: int
    once: bool
    max_in_flight: int

    @property
    def serial(self) -> float:
        return self.accounts * self.latency

    @property
    def ideal(self) -> float:
        return self.serial / self.concurrency

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "serial_seconds": self.serial, "ideal_seconds": self.ideal}


def _settings(url: str, graph_url: str, workdir: Path, **overrides: Any) -> Any:
    from waconv.config import load_settings
    from waconv.graph.fake import DEFAULT_TOKEN

    values = {
        "database_url": url,
        "access_token": DEFAULT_TOKEN,
        "graph_url": graph_url,
        "secret_key": common.SECRET_KEY,
        "rules_file": str(common.REPO / "config" / "rules.toml"),
        **overrides,
    }
    return load_settings(environ={}, overrides=values, dev_secrets_file=workdir / "none.json")


def _fill(services: Any, accounts: int, events: int, custom_data: dict[str, Any] | None) -> int:
    """``accounts x events`` pending conversions, each account with a dataset."""
    from waconv.accounts import registry
    from waconv.clock import utcnow
    from waconv.models import Conversion

    now = utcnow()
    with services.db.transaction() as session:
        for a in range(accounts):
            waba_id = f"5{a:014d}"
            registry.get_or_create_account(session, waba_id).dataset_id = f"6{a:014d}"
        session.flush()
        for a in range(accounts):
            rows = [
                {
                    "event_id": f"fleet-{a}-{e}",
                    "waba_id": f"5{a:014d}",
                    "ctwa_clid": f"ARclid-{a}-{e}",
                    "event_name": "LeadSubmitted",
                    "event_time": now - timedelta(hours=1),
                    "custom_data": custom_data,
                    "source": "admin",
                    "status": Conversion.PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for e in range(events)
            ]
            if rows:
                session.execute(insert(Conversion), rows)
    return accounts * events


def fleet(
    accounts: int, events: int, latency: float, concurrency: int, workdir: Path
) -> FleetResult:
    from waconv.conversions.dispatcher import Dispatcher
    from waconv.graph.fake import FakeGraph
    from waconv.services import Services

    url = common.fresh_sqlite(workdir, "fleet")
    common.migrate(url)
    with FakeGraph() as fake:
        fake.latency = latency
        services = Services.build(
            _settings(url, fake.url, workdir, dispatch_concurrency=concurrency)
        )
        try:
            total = _fill(services, accounts, events, None)
            start = time.perf_counter()
            stats = Dispatcher(services).run_once()
            seconds = time.perf_counter() - start
        finally:
            services.close()
        accepted = fake.accepted_event_ids()
        return FleetResult(
            accounts=accounts,
            events=events,
            latency=latency,
            concurrency=concurrency,
            seconds=seconds,
            sent=stats.sent,
            once=len(accepted) == total and set(accepted.values()) == {1},
            max_in_flight=fake.max_in_flight,
        )


def _peak_rss_mb(url: str, graph_url: str, workdir: Path) -> float:
    """Peak resident set of ``waconv dispatch --once`` in a child process, in MB: its
    ``VmHWM``, read from /proc until it exits. Not ``ru_maxrss``: the kernel carries the
    pre-exec high-water mark into it, and a child spawned with vfork shares this harness's
    pages until its exec (the same dispatcher measured 145 MB from a small harness and 169 MB
    after the fleet run had grown the harness)."""
    env = {
        **os.environ,
        "WACONV_DATABASE_URL": url,
        "WACONV_GRAPH_URL": graph_url,
        "WACONV_SECRET_KEY": common.SECRET_KEY,
        "WACONV_RULES_FILE": str(common.REPO / "config" / "rules.toml"),
    }
    from waconv.graph.fake import DEFAULT_TOKEN

    env["WACONV_ACCESS_TOKEN"] = DEFAULT_TOKEN
    waconv = Path(sys.executable).with_name("waconv")
    log_path = workdir / "memory-dispatch.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [str(waconv), "dispatch", "--once"],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    peak_kb = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError, IndexError):  # exiting between poll() and the read
            pass
        time.sleep(0.005)
    if child.returncode != 0:
        raise RuntimeError(f"waconv dispatch --once failed: {log_path.read_text()[-500:]}")
    if peak_kb == 0:  # it ended before a read: 0 MB would pass for "under the target"
        raise RuntimeError("waconv dispatch --once exited before its memory could be read")
    return peak_kb / 1024


def memory(workdir: Path) -> dict[str, Any]:
    from waconv.graph.fake import FakeGraph
    from waconv.services import Services

    filler = "x" * (BIG_EVENT_BYTES - 100)
    results: dict[str, Any] = {"events": BIG_EVENTS, "event_bytes": BIG_EVENT_BYTES}
    with FakeGraph() as fake:
        for name, events in (("empty", 0), ("loaded", BIG_EVENTS)):
            url = common.fresh_sqlite(workdir, f"memory-{name}")
            common.migrate(url)
            services = Services.build(_settings(url, fake.url, workdir))
            try:
                _fill(services, 1, events, {"note": filler})
            finally:
                services.close()
            results[f"{name}_mb"] = _peak_rss_mb(url, fake.url, workdir)
        results["accepted"] = len(fake.accepted_event_ids())
    results["target_mb"] = MEMORY_TARGET_MB
    return results


def run(
    *, accounts: int, events: int, latency: float, concurrency: int, workdir: Path
) -> dict[str, Any]:
    common.log(f"fleet: {accounts} accounts x {events} events, {latency} s a request")
    result = fleet(accounts, events, latency, concurrency, workdir)
    common.log(
        f"fleet: {result.seconds:.1f} s (ideal {result.ideal:.1f}, serial {result.serial:.0f})"
    )
    common.log(f"memory: {BIG_EVENTS} events of {BIG_EVENT_BYTES // 1000} KB")
    mem = memory(workdir)
    common.log(f"memory: peak {mem['loaded_mb']:.0f} MB (empty outbox {mem['empty_mb']:.0f} MB)")
    return {"fleet": result.to_dict(), "memory": mem}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet")
    p.add_argument("--accounts", type=int, default=500)
    p.add_argument("--events", type=int, default=4, help="per account")
    p.add_argument("--latency", type=float, default=0.3, help="seconds per events request")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="waconv-fleet-"))
    r = fleet(args.accounts, args.events, args.latency, args.concurrency, workdir)
    print(
        f"fleet: {r.accounts} accounts x {r.events} events, latency {r.latency} s, "
        f"concurrency {r.concurrency}: {r.seconds:.1f} s (sent {r.sent}, each once: {r.once}); "
        f"serial would take {r.serial:.1f} s ({r.serial / r.seconds:.1f}x slower), ideal "
        f"{r.ideal:.1f} s ({r.seconds / r.ideal:.2f}x ideal); max in flight {r.max_in_flight}"
    )
    return 0 if r.once else 1


if __name__ == "__main__":
    raise SystemExit(main())
