"""``waconv prune``: raw bodies, message texts, statuses and notices go with age; what
attribution, audits and redelivery detection need stays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401 - its C extension must load before freezegun swaps datetime
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import func, inspect, select

from tests import payloads as p
from tests.conftest import encode, signed_headers
from waconv.cli import main
from waconv.clock import utcnow
from waconv.conversations import store
from waconv.conversions.requestlog import RequestRecord, record_request
from waconv.models import (
    Account,
    AutomaticEvent,
    Click,
    Conversation,
    Conversion,
    DispatchRequest,
    DispatchRequestConversion,
    Message,
    MessageStatus,
    WebhookDelivery,
    WebhookNotice,
)
from waconv.retention import PruneStats, prune
from waconv.services import Services

START = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
DAYS = 30
YOUNG_AGE = timedelta(days=20)  # the young deliveries arrive this long after the old ones
PRUNE_AT = START + timedelta(days=DAYS, hours=1)  # the old ones are past the retention now

RULES = """
[[rules]]
name = "asked-for-price"
on = "message"
match = "(?i)price"
event = "LeadSubmitted"
"""

# What the old deliveries leave to prune; the young ones leave as much, untouched.
OLD_BODIES, OLD_MESSAGES, OLD_STATUSES, OLD_NOTICES = 3, 2, 2, 1
OLD_REQUESTS = 1  # a request to Meta that carried the old conversion


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    rules = tmp_path / "retention-rules.toml"
    rules.write_text(RULES)
    return make_app(rules_file=str(rules))


def post(client: FlaskClient, payload: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    body = encode(payload)
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200, r.text
    return body, r.json


def deliver(client: FlaskClient, tag: str, hour_ago: datetime) -> dict[str, bytes]:
    """One delivery of each kind: two messages (one fires a conversion), two statuses, an
    error; the bodies by kind."""
    ts = int(hour_ago.timestamp())
    wa_id = "16505551234" if tag == "old" else "16505559876"
    clid = f"ARclid-retention-{tag}"
    messages = p.delivery(
        p.text(f"{tag}: what is the price?", wa_id=wa_id, ts=ts, ref=p.referral(ctwa_clid=clid)),
        p.text(f"{tag}: my address is 1 Main St", wa_id=wa_id, ts=ts + 1),
        contacts=[p.contact(wa_id)],
    )
    statuses = p.envelope(
        p.change(
            statuses=[
                p.status(f"wamid.OUT-{tag}", "sent", ts=ts, recipient_id=wa_id),
                p.status(f"wamid.OUT-{tag}", "delivered", ts=ts + 2, recipient_id=wa_id),
            ]
        )
    )
    errors = p.envelope(p.change(errors=[p.error(title=f"Rate limit hit ({tag})")]))
    bodies = {}
    for kind, payload in {"messages": messages, "statuses": statuses, "errors": errors}.items():
        bodies[kind], answer = post(client, payload)
        assert answer["status"] == "stored", answer
    return bodies


def failing_delivery(client: FlaskClient, monkeypatch: pytest.MonkeyPatch, ts: int) -> bytes:
    """A delivery whose processing fails: stored with its body for a later replay."""

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("conversation store unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(store, "record_activity", boom)
        body, answer = post(
            client, p.delivery(p.text("failed: price?", wa_id="16505550000", ts=ts))
        )
    assert answer["status"] == "processing_failed"
    return body


def snapshot(services: Services, *models: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of these tables, every column."""
    out = {}
    with services.db.transaction() as session:
        for model in models:
            columns = [c.key for c in inspect(model).column_attrs]
            out[model.__tablename__] = [
                {c: getattr(row, c) for c in columns}
                for row in session.scalars(select(model).order_by(model.id))
            ]
    return out


def record_a_request(services: Services) -> int:
    """A request to Meta now, carrying every conversion so far."""
    with services.db.transaction() as session:
        ids = list(session.scalars(select(Conversion.id)))
        record = RequestRecord(
            at=utcnow(),
            waba_id="102290129340398",
            destination="graph",
            events=len(ids),
            bytes=300 * len(ids),
            duration_ms=40,
            http_status=200,
            events_received=len(ids),
        )
        return record_request(session, record, ids)


def count(services: Services, model: Any, *where: Any) -> int:
    with services.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def young_rows(services: Services, since: datetime) -> dict[str, list[dict[str, Any]]]:
    rows = snapshot(services, WebhookDelivery, Message, MessageStatus, WebhookNotice)
    stamp = {"webhook_deliveries": "received_at"}
    return {
        table: [r for r in found if r[stamp.get(table, "created_at")] >= since]
        for table, found in rows.items()
    }


KEPT = (Account, Conversation, Click, Conversion, AutomaticEvent)


@pytest.fixture
def history(
    app: Flask, services: Services, frozen: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Old deliveries (and a failed one) at START, young ones YOUNG_AGE later, the clock then
    moved past the retention of the old ones."""
    client = app.test_client()
    old = deliver(client, "old", START - timedelta(hours=1))
    failed = failing_delivery(client, monkeypatch, int(START.timestamp()) - 60)
    record_a_request(services)
    frozen.move_to(START + YOUNG_AGE)
    young_since = START + YOUNG_AGE
    young = deliver(client, "young", young_since - timedelta(hours=1))
    young_request = record_a_request(services)
    frozen.move_to(PRUNE_AT)
    assert count(services, Conversion) == 2  # one per conversation: "what is the price?"
    assert count(services, MessageStatus) == 2 * OLD_STATUSES
    assert count(services, WebhookNotice) == 2 * OLD_NOTICES
    return {
        "client": client,
        "old": old,
        "failed": failed,
        "young": young,
        "young_since": young_since,
        "young_request": young_request,
        "kept": snapshot(services, *KEPT),
        "young_rows": young_rows(services, young_since),
    }


def snapshot_requests(services: Services) -> list[DispatchRequest]:
    with services.db.transaction() as session:
        return list(session.scalars(select(DispatchRequest).order_by(DispatchRequest.id)))


def assert_pruned(services: Services, history: dict[str, Any]) -> None:
    with services.db.transaction() as session:
        deliveries = list(session.scalars(select(WebhookDelivery)))
        old_messages = list(
            session.scalars(select(Message).where(Message.created_at < history["young_since"]))
        )
    assert len(deliveries) == 2 * OLD_BODIES + 1  # no delivery row is ever deleted
    pruned = [d for d in deliveries if d.body is None]
    assert len(pruned) == OLD_BODIES
    assert all(d.pruned_at == PRUNE_AT and d.received_at == START for d in pruned)
    # The failed delivery keeps its body for `waconv webhooks replay`, and the young ones theirs.
    bodies = {d.body: d for d in deliveries if d.body is not None}
    assert set(bodies) == {history["failed"], *history["young"].values()}
    assert bodies[history["failed"]].status == WebhookDelivery.FAILED
    assert bodies[history["failed"]].pruned_at is None

    assert len(old_messages) == OLD_MESSAGES
    for message in old_messages:  # type, time and wamid stay; what the customer wrote goes
        assert (message.text, message.payload) == (None, None)
        assert message.wamid.startswith("wamid.") and message.type == "text"
    # SQL NULL, not the JSON value null (which `IS NOT NULL` would still match).
    assert count(services, Message, Message.payload.is_(None)) == OLD_MESSAGES
    assert count(services, MessageStatus) == OLD_STATUSES
    assert count(services, WebhookNotice) == OLD_NOTICES

    # The old request and its link go; the young one keeps its links, to both conversions.
    assert [r.id for r in snapshot_requests(services)] == [history["young_request"]]
    assert count(services, DispatchRequestConversion) == 2
    assert snapshot(services, *KEPT) == history["kept"]
    assert young_rows(services, history["young_since"]) == history["young_rows"]


def test_prune_forgets_old_bodies_texts_statuses_and_notices(
    services: Services, history: dict[str, Any]
) -> None:
    stats = prune(services, days=DAYS)

    assert stats == PruneStats(
        deliveries=OLD_BODIES,
        messages=OLD_MESSAGES,
        statuses=OLD_STATUSES,
        notices=OLD_NOTICES,
        requests=OLD_REQUESTS,
    )
    assert_pruned(services, history)
    # A second run finds nothing left to do, and changes nothing.
    before = snapshot(services, WebhookDelivery, Message, MessageStatus, WebhookNotice)
    assert prune(services, days=DAYS) == PruneStats()
    assert snapshot(services, WebhookDelivery, Message, MessageStatus, WebhookNotice) == before


def test_a_redelivered_pruned_body_is_still_a_duplicate(
    services: Services, history: dict[str, Any]
) -> None:
    prune(services, days=DAYS)
    kept = snapshot(services, *KEPT)
    messages = snapshot(services, Message)

    for body in history["old"].values():
        r = history["client"].post("/webhook", data=body, headers=signed_headers(body))
        assert (r.status_code, r.json["status"]) == (200, "duplicate")

    # Nothing acted on twice: no message, click or conversion came back, no body was stored.
    assert snapshot(services, *KEPT) == kept
    assert snapshot(services, Message) == messages
    assert count(services, WebhookDelivery, WebhookDelivery.body.is_(None)) == OLD_BODIES


def test_a_longer_retention_keeps_everything(services: Services, history: dict[str, Any]) -> None:
    before = snapshot(services, WebhookDelivery, Message, MessageStatus, WebhookNotice)

    assert prune(services, days=DAYS + 1) == PruneStats()
    assert len(snapshot_requests(services)) == 2

    assert snapshot(services, WebhookDelivery, Message, MessageStatus, WebhookNotice) == before


def test_a_replayed_failed_delivery_is_pruned_on_the_next_run(
    services: Services, history: dict[str, Any]
) -> None:
    from waconv.webhooks.ingest import replay

    prune(services, days=DAYS)
    assert [r.ok for r in replay(services, all_failed=True)] == [True]

    stats = prune(services, days=DAYS)

    # Its body goes; its message is new (created at replay time), so its text stays for now.
    assert stats == PruneStats(deliveries=1)
    assert count(services, WebhookDelivery, WebhookDelivery.body.is_not(None)) == 3


def test_prune_refuses_less_than_a_day(services: Services) -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        prune(services, days=0)


@pytest.fixture
def cli_env(services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no instance/dev-secrets.json of a developer's clone
    return {
        "WACONV_DATABASE_URL": services.settings.database_url,
        "WACONV_RULES_FILE": services.settings.rules_file,
    }


def test_waconv_prune_uses_the_configured_retention(
    services: Services, history: dict[str, Any], cli_env: dict[str, str]
) -> None:
    runner = CliRunner()

    longer = runner.invoke(main, ["prune"], env={**cli_env, "WACONV_RETENTION_DAYS": "45"})
    assert longer.exit_code == 0, longer.output
    assert (
        longer.stdout.strip()
        == "pruned 0 delivery bodies, 0 message texts, 0 statuses, 0 notices, 0 requests"
    )

    result = runner.invoke(main, ["prune"], env=cli_env)  # default: 30 days

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"pruned {OLD_BODIES} delivery bodies, {OLD_MESSAGES} message texts, "
        f"{OLD_STATUSES} statuses, {OLD_NOTICES} notices, {OLD_REQUESTS} requests"
    )
    assert_pruned(services, history)


def test_waconv_prune_days_option(
    services: Services, history: dict[str, Any], cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    env = {**cli_env, "WACONV_RETENTION_DAYS": "365"}

    result = runner.invoke(main, ["prune", "--days", str(DAYS)], env=env)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"pruned {OLD_BODIES} delivery bodies")
    assert_pruned(services, history)


def test_waconv_prune_refuses_a_negative_retention(
    services: Services, cli_env: dict[str, str]
) -> None:
    result = CliRunner().invoke(main, ["prune", "--days", "-1"], env=cli_env)

    assert result.exit_code == 1
    assert result.stderr.strip() == "error: retention must be at least 1 day"
