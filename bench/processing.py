"""Applying stored deliveries, in one process: waconv's processor against the floor.

Each contender starts from the same signed CTWA deliveries (bench/payloads.py), stored as a
request stores them (``ingest.store``) in a fresh database, and applies them all:

* ``waconv``: ``processor.drain()``, as the background processor works once requests stop;
* ``one-by-one``: the same with the set-based path off (every delivery through
  ``process_payload``, as before 0.4), for an A/B in the same sitting;
* ``floor``: the same rows (conversations, messages, clicks, the rules' conversions), built
  beforehand, inserted with one INSERT per table per batch, and the batch marked processed:
  the fewest statements any processor needs, so the distance to the limit shows.

Contenders alternate round by round; the median round is reported.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from sqlalchemy import func, insert, select, update

from bench import common
from bench.payloads import signed_deliveries

CONTENDERS = ("waconv", "one-by-one", "floor")


@dataclass
class ProcessingRun:
    contender: str
    backend: str
    round: int
    deliveries: int
    wall_s: float
    cpu_s: float  # this process (PostgreSQL's own CPU not included)
    messages: int = 0
    conversions: int = 0

    @property
    def rate(self) -> float:
        return self.deliveries / self.wall_s if self.wall_s else 0.0


@dataclass
class ProcessingResults:
    deliveries: int
    rounds: int
    runs: list[ProcessingRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deliveries": self.deliveries,
            "rounds": self.rounds,
            "runs": [{**asdict(r), "rate": r.rate} for r in self.runs],
            "skipped": self.skipped,
        }


def _services(url: str, workdir: Path) -> Any:
    from waconv.config import load_settings
    from waconv.services import Services

    settings = load_settings(
        environ={},
        overrides={
            "database_url": url,
            "app_secret": common.APP_SECRET,
            "verify_token": common.VERIFY_TOKEN,
            "secret_key": common.SECRET_KEY,
            "rules_file": str(common.REPO / "config" / "rules.toml"),
            "webhook_processing": "background",
        },
        dev_secrets_file=workdir / "no-dev-secrets.json",
    )
    return Services.build(settings)


def _store(services: Any, bodies: list[bytes]) -> None:
    from waconv.webhooks import ingest

    for body in bodies:
        ingest.store(services, body)


def _counts(services: Any) -> tuple[int, int]:
    from waconv.models import Conversion, Message

    with services.db.transaction() as session:
        messages = session.scalar(select(func.count()).select_from(Message)) or 0
        conversions = session.scalar(select(func.count()).select_from(Conversion)) or 0
    return messages, conversions


def run_waconv(
    bodies: list[bytes], backend: str, rnd: int, workdir: Path, *, set_based: bool = True
) -> ProcessingRun:
    from waconv.webhooks import batch, processor

    url = common.fresh_database(backend, workdir, "processing")
    common.migrate(url)
    services = _services(url, workdir)
    try:
        _store(services, bodies)
        # one-by-one: no delivery looks plain, so each goes through process_payload.
        off = mock.patch.object(batch, "plain_messages", lambda *_: None)
        with off if not set_based else contextlib.nullcontext():
            wall, cpu = time.perf_counter(), time.process_time()
            done = processor.drain(services)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        messages, conversions = _counts(services)
    finally:
        services.close()
    contender = "waconv" if set_based else "one-by-one"
    assert done == len(bodies) == messages, (contender, done, messages)
    return ProcessingRun(contender, backend, rnd, done, wall, cpu, messages, conversions)


def _floor_rows(services: Any, bodies: list[bytes]) -> list[dict[str, Any]]:
    """Per delivery, the rows waconv writes for it, built outside the timed part."""
    from waconv.conversations import store
    from waconv.rules.firing import rule_event_id
    from waconv.webhooks import batch, ingest

    rules = services.rules.for_trigger("message")
    out = []
    for body in bodies:
        plains = batch.plain_messages(0, ingest.parse_body(body))
        assert plains is not None and len(plains) == 1
        m = plains[0]
        clid = store.click_id(m.referral)
        assert clid is not None and m.referral is not None
        conversation: dict[str, Any] = {
            **store.first_message_state(m.timestamp, m.referral),
            "waba_id": m.waba_id,
            "phone_number_id": m.phone_number_id,
            "display_phone_number": m.display_phone_number,
            "wa_id": m.wa_id,
            "user_id": m.user_id,
            "profile_name": m.profile_name,
            "username": m.username,
            "parent_user_id": m.parent_user_id,
        }
        out.append(
            {
                "conversation": conversation,
                "message": {
                    "wamid": m.wamid,
                    "type": m.kind,
                    "timestamp": m.timestamp,
                    "text": m.text,
                    "payload": m.message,
                },
                "click": store.click_row(0, m.wamid, m.referral, m.timestamp),
                "conversions": [
                    {
                        "event_id": rule_event_id(rule, clid, m.wamid),
                        "waba_id": m.waba_id,
                        "ctwa_clid": clid,
                        "event_name": rule.event,
                        "event_time": m.timestamp,
                        "source": "rule",
                        "rule_name": rule.name,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": m.timestamp,
                    }
                    for rule in rules
                    if rule.matches(m.text, m.kind)
                ],
            }
        )
    return out


def run_floor(bodies: list[bytes], backend: str, rnd: int, workdir: Path) -> ProcessingRun:
    from waconv.models import Account, Click, Conversation, Conversion, Message, WebhookDelivery
    from waconv.webhooks.ingest import IDLE_BATCH

    url = common.fresh_database(backend, workdir, "processing")
    common.migrate(url)
    services = _services(url, workdir)
    try:
        _store(services, bodies)
        rows = _floor_rows(services, bodies)
        with services.db.transaction() as session:
            session.execute(insert(Account).values(waba_id=rows[0]["conversation"]["waba_id"]))
        new_conversations = insert(Conversation).returning(
            Conversation.id, sort_by_parameter_order=True
        )
        wall, cpu = time.perf_counter(), time.process_time()
        done = 0
        while True:
            with services.db.transaction() as session:
                ids = list(
                    session.scalars(
                        select(WebhookDelivery.id)
                        .where(WebhookDelivery.status == WebhookDelivery.RECEIVED)
                        .order_by(WebhookDelivery.id)
                        .limit(IDLE_BATCH)
                    )
                )
                if not ids:
                    break
                part = rows[done : done + len(ids)]
                conn = session.connection()
                conversation_ids = conn.execute(
                    new_conversations, [r["conversation"] for r in part]
                ).scalars()
                messages, clicks, conversions = [], [], []
                for r, cid, delivery_id in zip(part, conversation_ids, ids, strict=True):
                    messages.append(
                        {**r["message"], "conversation_id": cid, "delivery_id": delivery_id}
                    )
                    clicks.append({**r["click"], "conversation_id": cid})
                    conversions += [{**c, "conversation_id": cid} for c in r["conversions"]]
                for model, values in (
                    (Message, messages),
                    (Click, clicks),
                    (Conversion, conversions),
                ):
                    if values:  # one statement each: as waconv's batch.apply_plain does
                        one = insert(model)
                        if backend == "postgresql":
                            one = one.returning(model.id)
                        conn.execute(one, values)
                conn.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id.in_(ids))
                    .values(status=WebhookDelivery.PROCESSED, items=1)
                )
                done += len(ids)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        messages_n, conversions_n = _counts(services)
    finally:
        services.close()
    return ProcessingRun("floor", backend, rnd, done, wall, cpu, messages_n, conversions_n)


def run(*, deliveries: int, rounds: int, backends: list[str], workdir: Path) -> ProcessingResults:
    common.log(f"processing: {deliveries:,} deliveries, {rounds} round(s), contenders alternating")
    bodies = [d.body for d in signed_deliveries(deliveries, app_secret=common.APP_SECRET)]
    results = ProcessingResults(deliveries, rounds)
    for backend in backends:
        if backend == "postgresql":
            reason = common.postgres_available()
            if reason is not None:
                results.skipped[backend] = reason
                continue
        for rnd in range(rounds):
            for contender in CONTENDERS:
                if contender == "floor":
                    result = run_floor(bodies, backend, rnd, workdir)
                else:
                    result = run_waconv(
                        bodies, backend, rnd, workdir, set_based=contender == "waconv"
                    )
                results.runs.append(result)
                common.log(
                    f"processing {contender} on {backend}: {result.rate:,.0f} deliveries/s, "
                    f"{1000 * result.cpu_s / result.deliveries:.2f} ms CPU each "
                    f"({result.messages:,} messages, {result.conversions:,} conversions)"
                )
    return results


def median(results: ProcessingResults | dict[str, Any], contender: str, backend: str) -> Any:
    runs = results["runs"] if isinstance(results, dict) else [asdict(r) for r in results.runs]
    mine = [r for r in runs if r["contender"] == contender and r["backend"] == backend]
    if not mine:
        return None
    rate = statistics.median_low(r["deliveries"] / r["wall_s"] for r in mine)
    return next(r for r in mine if r["deliveries"] / r["wall_s"] == rate)


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    run(
        deliveries=args.deliveries,
        rounds=args.rounds,
        backends=args.backends.split(","),
        workdir=Path(tempfile.mkdtemp(prefix="waconv-processing-")),
    )
