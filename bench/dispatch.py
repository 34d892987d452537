"""Dispatch: N queued conversions to a loopback fake Graph API, three ways.

* ``waconv``: N pending rows in the outbox (SQLite, then PostgreSQL), ``Dispatcher.run_once()``
  timed from the first claim to the last state update (claim, build, send, mark sent: batches
  of 1,000, Meta's limit);
* ``sdk``: Meta's facebook-business SDK, the same events built as ``Event`` objects from the same
  rows and sent with ``EventRequest.execute()`` in batches of 1,000. The SDK has no
  ``user_data.whatsapp_business_account_id``, so, as a user must, a ``UserData`` subclass adds
  it in ``normalize()``. Its timing covers building and sending, no database;
* ``plain``: a ``requests.Session`` posting the JSON bodies, built and serialised beforehand
  (the ceiling of sending over HTTP from Python).

Each contender gets a fresh fake (bench/fakegraph.py, its own process), which must have accepted
every event exactly once. Contenders alternate over several rounds; the median is reported.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, insert, select

from bench import common
from bench.fakegraph import WABA_ID

BATCH = 1000  # Meta's limit per events request
GRAPH_VERSION = "v26.0"
CURRENCIES = ("BRL", "USD", "EUR")


@dataclass
class DispatchRun:
    contender: str
    backend: str
    round: int
    events: int
    seconds: float
    events_per_s: float
    accepted: int = 0
    distinct: int = 0
    max_per_id: int = 0
    db_sent: int | None = None
    verified: bool = False
    note: str = ""
    # CPU seconds of the timed part: the sending process (every thread), the fake's process,
    # and PostgreSQL's processes when waconv runs on it.
    cpu_s: float | None = None
    fake_cpu_s: float | None = None
    db_cpu_s: float | None = None

    @property
    def total_cpu_s(self) -> float | None:
        """What the run cost the machine's cores: every process's CPU together."""
        if self.cpu_s is None:
            return None
        return sum(p for p in (self.cpu_s, self.fake_cpu_s, self.db_cpu_s) if p is not None)


@dataclass
class DispatchResults:
    events: int
    rounds: int
    runs: list[DispatchRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the events -------------------------------------------------------------------------------


def make_rows(count: int, *, seed: int = 11) -> list[dict[str, Any]]:
    """Validated conversions, as the outbox holds them: 40 % LeadSubmitted, 30 % Purchase,
    30 % InitiateCheckout with contents."""
    from waconv.clock import utcnow
    from waconv.conversions.events import event_id_for, validate_conversion

    rng = random.Random(seed)
    now = utcnow()
    rows = []
    for i in range(count):
        pick = i % 10
        custom: dict[str, Any] | None
        if pick < 4:
            name, custom = "LeadSubmitted", None
        elif pick < 7:
            name = "Purchase"
            custom = {"value": round(rng.uniform(9, 900), 2), "currency": rng.choice(CURRENCIES)}
        else:
            name = "InitiateCheckout"
            items: list[dict[str, Any]] = [
                {
                    "id": f"SKU-{rng.randint(1000, 9999)}",
                    "quantity": rng.randint(1, 3),
                    "item_price": round(rng.uniform(5, 120), 2),
                }
                for _ in range(rng.randint(1, 3))
            ]
            custom = {
                "value": round(sum(x["quantity"] * x["item_price"] for x in items), 2),
                "currency": rng.choice(CURRENCIES),
                "contents": items,
                "num_items": sum(x["quantity"] for x in items),
            }
        event_time = now - timedelta(seconds=rng.randint(60, 2 * 86400))
        event_time, custom = validate_conversion(name, event_time, custom, now)
        clid = f"Aff{i:08d}" + "x" * 120
        rows.append(
            {
                "event_id": f"bench.{event_id_for('bench', str(i))[:24]}",
                "waba_id": WABA_ID,
                "ctwa_clid": clid,
                "event_name": name,
                "event_time": event_time,
                "custom_data": custom,
                "source": "admin",
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now - timedelta(seconds=1),
            }
        )
    return rows


def meta_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from waconv.conversions.events import build_meta_event

    return [
        build_meta_event(
            event_name=r["event_name"],
            event_time=r["event_time"],
            event_id=r["event_id"],
            waba_id=WABA_ID,
            ctwa_clid=r["ctwa_clid"],
            custom_data=r["custom_data"],
        )
        for r in rows
    ]


# -- the fake ---------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, module: str = "bench.fakegraph") -> None:
        self.module = module  # bench.fakegateway: the Gateway contender's

    def __enter__(self) -> FakeProcess:
        self.proc = subprocess.Popen(
            [common.PYTHON, "-m", self.module],
            cwd=common.REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self.dataset_id: str = hello["dataset_id"]
        self.access_key: str = hello.get("access_key", "")
        return self

    def cpu(self) -> float:
        return float(self.stats()["cpu_s"])

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _postgres_cpu() -> dict[int, int]:
    """Clock ticks of CPU used so far by each PostgreSQL process of this machine, by pid
    (Linux's /proc; a tick is 10 ms)."""
    used = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if name == "postgres":
            fields = rest.split()
            used[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime, stime
    return used


def _postgres_cpu_since(before: dict[int, int]) -> float:
    """CPU seconds PostgreSQL's processes used since ``before``: those still running (a
    connection closed meanwhile was idle before it closed) and those started since."""
    now = _postgres_cpu()
    return sum(ticks - before.get(pid, 0) for pid, ticks in now.items()) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and CPU of a contender's timed part: this process (all its threads, waconv's
    sender and recorder included), the fake's process, and PostgreSQL's when it is the
    database. CPU per event, beside the rate, shows what a contender costs the machine: all of
    them share its 2 cores with the fake."""

    def __init__(self, fake: FakeProcess, *, postgres: bool = False) -> None:
        self.fake, self.postgres = fake, postgres

    def __enter__(self) -> Meter:
        self.fake_cpu = self.fake.cpu()
        self.db_before = _postgres_cpu() if self.postgres else None
        self.cpu = time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu = time.process_time() - self.cpu
        self.db_cpu = None if self.db_before is None else _postgres_cpu_since(self.db_before)
        self.fake_cpu = self.fake.cpu() - self.fake_cpu

    def run(self, contender: str, backend: str, rnd: int, events: int, **more: Any) -> DispatchRun:
        return DispatchRun(
            contender,
            backend,
            rnd,
            events,
            self.seconds,
            events / self.seconds,
            cpu_s=self.cpu,
            fake_cpu_s=self.fake_cpu,
            db_cpu_s=self.db_cpu,
            **more,
        )


def _finish(run: DispatchRun, fake: FakeProcess) -> DispatchRun:
    s = fake.stats()
    run.accepted, run.distinct, run.max_per_id = s["events"], s["distinct"], s["max_per_id"]
    run.verified = (
        run.accepted == run.events
        and run.distinct == run.events
        and run.max_per_id == 1
        and (run.db_sent is None or run.db_sent == run.events)
    )
    common.log(
        f"dispatch {run.contender}{'/' + run.backend if run.backend != '-' else ''} "
        f"round {run.round}: {run.events_per_s:,.0f} events/s ({run.seconds:.2f} s), "
        f"accepted {run.accepted}, duplicates {run.max_per_id > 1}, ok={run.verified}; "
        f"CPU per 1,000 events: {cpu_per_thousand(run.cpu_s, run)} ms here, "
        f"{cpu_per_thousand(run.fake_cpu_s, run)} ms the fake"
        + (f", {cpu_per_thousand(run.db_cpu_s, run)} ms PostgreSQL" if run.db_cpu_s else "")
    )
    return run


# -- the contenders ---------------------------------------------------------------------------


def run_plain(events: list[dict[str, Any]], rnd: int) -> DispatchRun:
    with FakeProcess() as fake:
        url = f"{fake.url}/{GRAPH_VERSION}/{fake.dataset_id}/events"
        headers = {
            "Authorization": f"Bearer {common.GRAPH_TOKEN}",
            "Content-Type": "application/json",
        }
        # Bodies and their sizes are ready before the clock starts: the loop only posts and
        # checks each receipt.
        bodies = [
            (
                json.dumps({"data": events[i : i + BATCH]}, separators=(",", ":")).encode(),
                len(events[i : i + BATCH]),
            )
            for i in range(0, len(events), BATCH)
        ]
        with requests.Session() as session, Meter(fake) as meter:
            for body, size in bodies:
                r = session.post(url, data=body, headers=headers, timeout=30)
                r.raise_for_status()
                if r.json().get("events_received") != size:
                    raise RuntimeError(f"plain: short receipt {r.text[:200]}")
        return _finish(meter.run("plain", "-", rnd, len(events)), fake)


def _sdk_classes() -> Any:
    from facebook_business.adobjects.serverside.user_data import UserData

    class WhatsAppUserData(UserData):
        """The SDK's UserData lacks whatsapp_business_account_id; Meta requires it for
        business_messaging events, so it is added to what ``normalize()`` returns."""

        def __init__(self, *, whatsapp_business_account_id: str, ctwa_clid: str) -> None:
            super().__init__(ctwa_clid=ctwa_clid)
            self.whatsapp_business_account_id = whatsapp_business_account_id

        def normalize(self) -> dict[str, Any]:
            payload: dict[str, Any] = super().normalize()
            payload["whatsapp_business_account_id"] = self.whatsapp_business_account_id
            return payload

    return WhatsAppUserData


def run_sdk(rows: list[dict[str, Any]], rnd: int) -> DispatchRun:
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.content import Content
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.adobjects.serverside.messaging_channel import MessagingChannel
    from facebook_business.api import FacebookAdsApi

    WhatsAppUserData = _sdk_classes()

    def to_event(r: dict[str, Any]) -> Any:
        custom = None
        data = r["custom_data"]
        if data:
            contents = [
                Content(product_id=c["id"], quantity=c["quantity"], item_price=c["item_price"])
                for c in data.get("contents", ())
            ]
            custom = CustomData(
                value=data.get("value"),
                currency=data.get("currency"),
                contents=contents or None,
                num_items=data.get("num_items"),
            )
        return Event(
            event_name=r["event_name"],
            event_time=int(r["event_time"].timestamp()),
            event_id=r["event_id"],
            action_source=ActionSource.BUSINESS_MESSAGING,
            messaging_channel=MessagingChannel.WHATSAPP,
            user_data=WhatsAppUserData(
                whatsapp_business_account_id=WABA_ID, ctwa_clid=r["ctwa_clid"]
            ),
            custom_data=custom,
        )

    with FakeProcess() as fake:
        api = FacebookAdsApi.init(
            access_token=common.GRAPH_TOKEN, api_version=GRAPH_VERSION, crash_log=False
        )
        # FacebookAdsApi.call builds "/".join((session.GRAPH, version, *path)): point it here.
        api._session.GRAPH = fake.url
        with Meter(fake) as meter:
            for i in range(0, len(rows), BATCH):
                chunk = rows[i : i + BATCH]
                response = EventRequest(
                    pixel_id=fake.dataset_id, events=[to_event(r) for r in chunk]
                ).execute()
                if response.events_received != len(chunk):
                    raise RuntimeError(f"sdk: short receipt {response.events_received}")
        api._session.requests.close()
        return _finish(meter.run("sdk", "-", rnd, len(rows)), fake)


def run_waconv(
    rows: list[dict[str, Any]], backend: str, rnd: int, workdir: Path, *, gateway: bool = False
) -> DispatchRun:
    """``gateway``: the account sends to a Conversions API Gateway (a loopback fake) instead."""
    from waconv.config import load_settings
    from waconv.conversions.dispatcher import Dispatcher
    from waconv.models import Conversion
    from waconv.services import Services

    url = common.fresh_database(backend, workdir, "dispatch-waconv")
    common.migrate(url)
    with FakeProcess("bench.fakegateway" if gateway else "bench.fakegraph") as fake:
        routing = {}
        if gateway:
            routing = {
                "destination": "gateway",
                "gateway_url": fake.url,
                "gateway_access_key": fake.access_key,
            }
        settings = load_settings(
            environ={},
            overrides={
                **routing,
                "database_url": url,
                "access_token": common.GRAPH_TOKEN,
                "waba_id": WABA_ID,
                "dataset_id": fake.dataset_id,
                "graph_url": fake.url,
                "graph_version": GRAPH_VERSION,
                "app_secret": common.APP_SECRET,
                "verify_token": common.VERIFY_TOKEN,
                "secret_key": common.SECRET_KEY,
                "rules_file": str(common.REPO / "config" / "rules.toml"),
            },
            dev_secrets_file=workdir / "no-dev-secrets.json",
        )
        _fill_outbox(url, rows)
        services = Services.build(settings)
        try:
            dispatcher = Dispatcher(services)
            with Meter(fake, postgres=backend == "postgresql") as meter:
                stats = dispatcher.run_once()
            with services.db.transaction() as session:
                sent = session.scalar(
                    select(func.count()).where(Conversion.status == Conversion.SENT)
                )
        finally:
            services.close()
        contender = "waconv-gateway" if gateway else "waconv"
        run = meter.run(contender, backend, rnd, len(rows), db_sent=sent)
        if stats.sent != len(rows):
            run.note = f"dispatcher reported {stats.sent} sent"
        return _finish(run, fake)


def run_floor(rows: list[dict[str, Any]], rnd: int, workdir: Path) -> DispatchRun:
    """The floor of any durable outbox, on waconv's SQLite schema: per batch, one SELECT of the
    next due rows and one UPDATE marking them sent, the request pipelined as waconv's is, the
    events built with waconv's ``build_meta_event``. No lease, no validation, no retry or
    failure handling, one process only: what is left when everything but reading the rows and
    recording their fate is taken away. Not a product (two of them would send the same
    events): it measures how close to ``plain`` a durable outbox can come here."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    import orjson

    from waconv.conversions.events import build_meta_event

    url = common.fresh_database("sqlite", workdir, "dispatch-floor")
    common.migrate(url)
    _fill_outbox(url, rows)
    conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")  # as waconv's engine
    due = (
        "SELECT id, event_id, event_name, event_time, ctwa_clid, custom_data, next_attempt_at"
        " FROM conversions WHERE waba_id = ? AND status = 'pending' AND next_attempt_at <= ?"
        " AND (next_attempt_at, id) > (?, ?) ORDER BY next_attempt_at, id LIMIT ?"
    )
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")

    def mark_sent(ids: list[int]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE conversions SET status = 'sent', sent_at = ?, attempts = attempts + 1"
            f" WHERE id IN ({','.join('?' * len(ids))})",
            (now, *ids),
        )
        conn.execute("COMMIT")

    with FakeProcess() as fake, requests.Session() as session:
        url_events = f"{fake.url}/{GRAPH_VERSION}/{fake.dataset_id}/events"
        headers = {
            "Authorization": f"Bearer {common.GRAPH_TOKEN}",
            "Content-Type": "application/json",
        }

        def post(body: bytes) -> None:
            session.post(url_events, data=body, headers=headers, timeout=30).raise_for_status()

        after: tuple[str, int] = ("", 0)
        flying = None
        with Meter(fake) as meter, ThreadPoolExecutor(max_workers=1) as sender:
            while True:
                batch = conn.execute(due, (WABA_ID, now, *after, BATCH)).fetchall()
                body = orjson.dumps(
                    {
                        "data": [
                            build_meta_event(
                                event_name=name,
                                event_time=datetime.fromisoformat(when).replace(tzinfo=UTC),
                                event_id=event_id,
                                waba_id=WABA_ID,
                                ctwa_clid=clid,
                                custom_data=orjson.loads(custom) if custom else None,
                            )
                            for _, event_id, name, when, clid, custom, _ in batch
                        ]
                    }
                )
                if flying is not None:  # batch k answered: record it, then send k+1
                    future, ids = flying
                    future.result()
                    mark_sent(ids)
                    flying = None
                if not batch:
                    break
                after = (batch[-1][6], batch[-1][0])
                flying = (sender.submit(post, body), [r[0] for r in batch])
        sent = conn.execute("SELECT count(*) FROM conversions WHERE status = 'sent'").fetchone()[0]
        conn.close()
        return _finish(meter.run("floor", "sqlite", rnd, len(rows), db_sent=sent), fake)


def _fill_outbox(url: str, rows: list[dict[str, Any]]) -> None:
    from waconv.accounts.registry import get_or_create_account
    from waconv.db import Database
    from waconv.models import Conversion

    db = Database(url)
    try:
        with db.transaction() as session:
            get_or_create_account(session, WABA_ID)
            for i in range(0, len(rows), BATCH):
                session.execute(insert(Conversion), rows[i : i + BATCH])
        if db.dialect == "postgresql":
            # The planner statistics a running database has: autovacuum analyzes a table within
            # a minute of such an insert, and the run starts at once. Without them PostgreSQL
            # marked each batch sent with a scan of the whole table (16-18 ms per 1,000 rows on
            # the server instead of 10-12, measured on 2026-12-06).
            with db.autocommit_cursor() as cursor:
                cursor.execute("ANALYZE conversions")
    finally:
        db.dispose()


def run(*, events: int, rounds: int, backends: list[str], workdir: Path) -> DispatchResults:
    common.log(f"dispatch: {events:,} events, {rounds} round(s)")
    rows = make_rows(events)
    prebuilt = meta_events(rows)
    # The harness's own data (these rows and bodies, some 100,000 objects) out of the garbage
    # collector's reach: otherwise each full collection in a contender that allocates (the SDK,
    # waconv) walks it, a cost no real sender carries. `waconv dispatch` freezes what its
    # start-up made the same way.
    gc.freeze()
    results = DispatchResults(events=events, rounds=rounds)
    active = []
    for backend in backends:
        reason = common.postgres_available() if backend == "postgresql" else None
        if reason is None:
            active.append(backend)
        else:
            results.skipped[backend] = reason
    for rnd in range(1, rounds + 1):
        results.runs.append(run_plain(prebuilt, rnd))
        results.runs.append(run_sdk(rows, rnd))
        for backend in active:
            results.runs.append(run_waconv(rows, backend, rnd, workdir))
            results.runs.append(run_waconv(rows, backend, rnd, workdir, gateway=True))
        results.runs.append(run_floor(rows, rnd, workdir))
    return results


def cpu_per_thousand(seconds: float | None, run: DispatchRun) -> str:
    return "—" if seconds is None else f"{seconds * 1000 / (run.events / 1000):.1f}"


def median_run(results: DispatchResults, contender: str, backend: str = "-") -> DispatchRun | None:
    """The verified run whose rate is the median (the lower middle one of an even count)."""
    runs = sorted(
        (
            r
            for r in results.runs
            if r.contender == contender and r.backend == backend and r.verified
        ),
        key=lambda r: r.events_per_s,
    )
    return runs[(len(runs) - 1) // 2] if runs else None


def median_rate(results: DispatchResults, contender: str, backend: str = "-") -> float:
    rates = [
        r.events_per_s
        for r in results.runs
        if r.contender == contender and r.backend == backend and r.verified
    ]
    return statistics.median(rates) if rates else 0.0
