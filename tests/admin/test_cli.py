"""``waconv conversions mark / list / retry``: the admin API from a shell, same rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.admin.conftest import WA_ID, Admin, set_conversion
from tests.conftest import APP_SECRET, SECRET_KEY, VERIFY_TOKEN
from tests.webhooks.helpers import count, one, rows
from waconv.cli import main
from waconv.clock import to_unix, utcnow
from waconv.models import Conversion
from waconv.services import Services


@pytest.fixture
def waconv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str, rules_path: Path
) -> Callable[..., Result]:
    """Run ``waconv ARGS`` against the test database, as an operator's shell would."""
    monkeypatch.chdir(tmp_path)  # no instance/dev-secrets.json of a developer's clone
    monkeypatch.setenv("WACONV_DATABASE_URL", db_url)
    monkeypatch.setenv("WACONV_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("WACONV_VERIFY_TOKEN", VERIFY_TOKEN)
    monkeypatch.setenv("WACONV_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("WACONV_RULES_FILE", str(rules_path))

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["conversions", *args])

    return run


def _fails(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_mark_with_value_and_currency(
    waconv: Callable[..., Result], services: Services, clicked: str
) -> None:
    args = ["mark", "--wa-id", clicked, "--event", "Purchase", "--value", "12.5"]
    result = waconv(*args, "--currency", "brl", "--order-id", "P-1")
    assert result.exit_code == 0, result.output
    stored = one(services, Conversion)
    assert result.stdout.startswith(f"queued: conversion {stored.id} Purchase at ")
    assert stored.event_id in result.stdout
    assert stored.status == Conversion.PENDING
    assert stored.source == "admin"
    assert stored.order_id == "P-1"
    assert stored.custom_data == {"value": 12.5, "currency": "BRL", "order_id": "P-1"}

    again = waconv(*args, "--currency", "BRL", "--order-id", "P-1")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"already recorded: conversion {stored.id} ")
    assert count(services, Conversion) == 1


def test_mark_is_the_same_conversion_as_the_api(
    waconv: Callable[..., Result], admin: Admin, services: Services, clicked: str
) -> None:
    api = admin.mark(wa_id=clicked, event_name="OrderShipped", order_id="S-9")
    assert api.status_code == 202
    result = waconv("mark", "--wa-id", clicked, "--event", "OrderShipped", "--order-id", "S-9")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"already recorded: conversion {api.json['id']} ")
    assert count(services, Conversion) == 1


def test_mark_with_custom_data_event_time_and_json_output(
    waconv: Callable[..., Result], services: Services, clicked: str
) -> None:
    moment = to_unix(utcnow()) - 3600
    result = waconv(
        "mark",
        "--wa-id",
        clicked,
        "--event",
        "InitiateCheckout",
        "--custom-data",
        '{"num_items": 3, "contents": [{"id": "sku-1", "quantity": 3}]}',
        "--event-time",
        str(moment),
        "--json",
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    stored = one(services, Conversion)
    assert shown["id"] == stored.id
    assert to_unix(stored.event_time) == moment
    assert stored.custom_data == {"num_items": 3, "contents": [{"id": "sku-1", "quantity": 3}]}


def test_mark_by_user_id_of_an_unknown_user(
    waconv: Callable[..., Result], services: Services, clicked: str
) -> None:
    _fails(
        waconv("mark", "--user-id", "US.1", "--event", "LeadSubmitted"),
        "no conversation with user_id 'US.1'",
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--wa-id", WA_ID, "--event", "Lead"], ("event_name 'Lead'", "LeadSubmitted")),
        (["--wa-id", WA_ID, "--event", "Purchase"], ("custom_data is required for a Purchase",)),
        (["--wa-id", WA_ID, "--event", "Purchase", "--value", "3"], ("custom_data.currency",)),
        (
            ["--wa-id", WA_ID, "--event", "Purchase", "--value", "nan", "--currency", "USD"],
            ("custom_data.value",),
        ),
        (["--wa-id", WA_ID, "--event", "LeadSubmitted", "--custom-data", "{"], ("not JSON",)),
        (["--wa-id", WA_ID, "--event", "LeadSubmitted", "--custom-data", "[]"], ("JSON object",)),
        (
            [
                *("--wa-id", WA_ID, "--event", "Purchase", "--currency", "USD", "--value", "1"),
                *("--custom-data", '{"value": 2}'),
            ],
            ("give it once",),
        ),
        (["--event", "LeadSubmitted"], ("wa_id", "required")),
        (["--wa-id", WA_ID, "--user-id", "US.1", "--event", "LeadSubmitted"], ("not both",)),
        (
            ["--wa-id", WA_ID, "--event", "LeadSubmitted", "--event-time", "1000000000"],
            ("more than 7 days old",),
        ),
        (["--wa-id", "19995550000", "--event", "LeadSubmitted"], ("no conversation",)),
    ],
    ids=[
        "unknown-event",
        "purchase-without-custom-data",
        "value-without-currency",
        "value-nan",
        "custom-data-not-json",
        "custom-data-not-object",
        "value-twice",
        "no-user",
        "both-users",
        "too-old",
        "unknown-user",
    ],
)
def test_mark_refusals_are_one_line_and_exit_1(
    waconv: Callable[..., Result], services: Services, clicked: str, args: list, words: tuple
) -> None:
    _fails(waconv("mark", *args), *words)
    assert count(services, Conversion) == 0


def test_mark_without_a_click_exits_1(
    waconv: Callable[..., Result], services: Services, not_clicked: str
) -> None:
    _fails(waconv("mark", "--wa-id", not_clicked, "--event", "LeadSubmitted"), "ctwa_clid")
    assert count(services, Conversion) == 0


def test_list(
    waconv: Callable[..., Result], admin: Admin, services: Services, clicked: str
) -> None:
    assert waconv("list").stdout == "no conversions\n"
    for order in ("L-1", "L-2", "L-3"):
        assert (
            admin.mark(wa_id=clicked, event_name="OrderCreated", order_id=order).status_code == 202
        )
    first, second, third = (c.id for c in rows(services, Conversion))
    set_conversion(services, second, status=Conversion.FAILED, last_error="refused by Meta")

    result = waconv("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "EVENT",
        "EVENT_TIME",
        "ATTEMPTS",
        "SOURCE",
        "LAST_ERROR",
    ]
    assert [line.split()[0] for line in lines[1:]] == [str(third), str(second), str(first)]
    assert lines[2].split()[1] == "failed"
    assert lines[2].endswith("refused by Meta")

    failed = waconv("list", "--status", "failed", "--json")
    assert failed.exit_code == 0, failed.output
    page = json.loads(failed.stdout)
    assert [item["id"] for item in page["items"]] == [second]
    assert page["next_cursor"] is None

    paged = waconv("list", "--limit", "2")
    assert paged.exit_code == 0
    cursor = paged.stdout.splitlines()[-1].removeprefix("more: --cursor ")
    rest = waconv("list", "--limit", "2", "--cursor", cursor)
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:]] == [str(first)]


def test_list_refusals(waconv: Callable[..., Result], clicked: str) -> None:
    _fails(waconv("list", "--limit", "5000"), "limit must be from 1 to 1000")
    _fails(waconv("list", "--cursor", "nope"), "cursor")
    _fails(waconv("list", "--event-name", "Lead"), "event_name")


def test_retry(
    waconv: Callable[..., Result], admin: Admin, services: Services, clicked: str
) -> None:
    conversion_id = admin.mark(wa_id=clicked, event_name="LeadSubmitted").json["id"]
    _fails(waconv("retry", str(conversion_id)), "is pending", "only failed")
    set_conversion(services, conversion_id, status=Conversion.FAILED, attempts=1)
    result = waconv("retry", str(conversion_id))
    assert result.exit_code == 0, result.output
    assert f"queued again: conversion {conversion_id}" in result.stdout
    assert one(services, Conversion).status == Conversion.PENDING
    _fails(waconv("retry", "424242"), "no conversion with id 424242")


def test_unreachable_database_is_one_line(
    waconv: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACONV_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    _fails(waconv("list"), "cannot reach the database")
    _fails(
        waconv("mark", "--wa-id", WA_ID, "--event", "LeadSubmitted"), "cannot reach the database"
    )
