"""`waconv accounts set --destination ...`: per-account destinations, the Gateway key stored
encrypted and never shown, and the dispatcher sending where the account says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.accounts.conftest import Cli, database_files, database_text
from tests.accounts.helpers import WABA_A, WABA_B
from tests.conftest import DATASET_ID
from tests.dispatch.helpers import enqueue_many
from waconv.conversions.dispatcher import Dispatcher
from waconv.gateway.fake import FakeGateway
from waconv.graph.fake import FakeGraph
from waconv.services import Services

KEY = "gwKEY-accounts-0123456789-distinctive"


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    with FakeGateway(access_key=KEY) as fake:
        yield fake


def test_an_account_set_to_the_gateway_sends_there_while_others_stay_on_graph(
    cli: Cli,
    services: Services,
    db_url: str,
    fake_graph: FakeGraph,
    fake_gateway: FakeGateway,
) -> None:
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--dataset-id", DATASET_ID)
    result = cli.ok(
        "accounts",
        "set",
        "--waba-id",
        WABA_A,
        "--destination",
        "gateway",
        "--gateway-url",
        fake_gateway.url,
        "--gateway-key-stdin",
        input=KEY + "\n",
    )
    assert KEY not in result.stdout + result.stderr
    cli.ok("accounts", "set", "--waba-id", WABA_B, "--dataset-id", "123456789012345")
    shown = cli.accounts()
    assert shown[WABA_A]["destination"] == "gateway"
    assert shown[WABA_A]["gateway_key"] == "set"
    assert shown[WABA_B]["destination"] == "graph"
    assert KEY not in database_text(db_url)
    assert KEY.encode() not in database_files(db_url)

    a = enqueue_many(services, 2, prefix="a", waba_id=WABA_A)
    b = enqueue_many(services, 2, prefix="b", waba_id=WABA_B)
    Dispatcher(services).run_once()

    assert fake_gateway.accepted_event_ids() == {eid: 1 for eid in a}
    assert fake_graph.accepted_event_ids() == {eid: 1 for eid in b}


def test_gateway_events_are_checked_and_cleared(cli: Cli) -> None:
    line = cli.fails("accounts", "set", "--waba-id", WABA_A, "--gateway-events", "Lead")
    assert "Lead" in line and "Purchase" in line
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--gateway-events", "Purchase, AddToCart")
    assert cli.accounts()[WABA_A]["gateway_events"] == ["AddToCart", "Purchase"]
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--gateway-events", "")
    assert cli.accounts()[WABA_A]["gateway_events"] is None


def test_a_bad_destination_is_a_usage_error(cli: Cli) -> None:
    result = cli("accounts", "set", "--waba-id", WABA_A, "--destination", "pigeon")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_the_list_table_shows_each_accounts_destination(cli: Cli) -> None:
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--destination", "both")
    cli.ok("accounts", "set", "--waba-id", WABA_B, "--dataset-id", DATASET_ID)

    header, *rows = cli.ok("accounts", "list").stdout.splitlines()

    assert header.split()[3] == "DESTINATION"
    assert {row.split()[0]: row.split()[3] for row in rows} == {WABA_A: "both", WABA_B: "graph"}
