"""The dispatcher with many WhatsApp Business Accounts: each account's events go to its own
dataset with its own token, and one account's trouble never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.accounts.conftest import Cli, fail_edge
from tests.accounts.helpers import (
    TOKEN_A,
    TOKEN_B,
    WABA_A,
    WABA_B,
    account,
    converse,
    conversions,
    enqueue_leads,
)
from tests.conftest import signed_headers
from waconv.accounts import registry
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph, dataset_id_for
from waconv.models import Account, Conversion
from waconv.services import Services

NEW_TOKEN_A = "EAAGwabaAreplacementToken5555666677778888999900001111"


def requests_by_dataset(fake: FakeGraph) -> dict[str, list[dict[str, Any]]]:
    """dataset id -> the events requests the fake received for it, in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for request in fake.events_requests():
        dataset = request["path"].split("/")[2]
        out.setdefault(dataset, []).append(request)
    return out


def sent_event_ids(requests: list[dict[str, Any]]) -> set[str]:
    return {e["event_id"] for r in requests if r["accepted"] for e in r["json"]["data"]}


def paused_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("account.paused")]


@pytest.fixture
def two_accounts(
    cli: Cli,
    close_graph: Services,
    post_webhook: Callable[..., Any],
    fake_graph: FakeGraph,
) -> dict[str, list[str]]:
    """WABA A and WABA B, each with its own token and dataset and two leads queued."""
    fake_graph.valid_tokens |= {TOKEN_A, TOKEN_B}
    queued = {}
    for waba, token in ((WABA_A, TOKEN_A), (WABA_B, TOKEN_B)):
        converse(post_webhook, waba)
        cli.ok("accounts", "set-token", "--waba-id", waba, "--token-stdin", input=token)
        cli.ok("provision-dataset", "--waba-id", waba)
        queued[waba] = enqueue_leads(close_graph, waba)
    return queued


def test_each_account_gets_its_own_events_with_its_own_token(
    two_accounts: dict[str, list[str]], services: Services, fake_graph: FakeGraph
) -> None:
    stats = Dispatcher(services).run_once()

    assert stats.sent == 4
    by_dataset = requests_by_dataset(fake_graph)
    assert set(by_dataset) == {dataset_id_for(WABA_A), dataset_id_for(WABA_B)}
    for waba, token in ((WABA_A, TOKEN_A), (WABA_B, TOKEN_B)):
        requests = by_dataset[dataset_id_for(waba)]
        for request in requests:
            assert request["path"] == f"/v26.0/{dataset_id_for(waba)}/events"
            assert request["headers"]["Authorization"] == f"Bearer {token}"
            for event in request["json"]["data"]:
                assert event["user_data"]["whatsapp_business_account_id"] == waba
                assert event["user_data"]["ctwa_clid"].startswith(f"Aff-{waba}-")
        assert sent_event_ids(requests) == set(two_accounts[waba])
        for row in conversions(services, waba):
            assert (row.status, row.dataset_id) == (Conversion.SENT, dataset_id_for(waba))


def test_a_revoked_token_pauses_only_its_account(
    cli: Cli,
    two_accounts: dict[str, list[str]],
    services: Services,
    fake_graph: FakeGraph,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_graph.valid_tokens.discard(TOKEN_A)
    caplog.set_level(logging.INFO)

    stats = Dispatcher(services).run_once()

    assert stats.paused_accounts == [WABA_A]
    assert {r.status for r in conversions(services, WABA_B)} == {Conversion.SENT}
    held = conversions(services, WABA_A)
    assert {r.status for r in held} == {Conversion.PENDING}
    assert {r.attempts for r in held} == {0}  # the events were never at fault
    for row in held:
        assert row.last_error is not None
        assert row.last_error.startswith("held: account paused")
        assert f"waconv accounts set-token --waba-id {WABA_A}" in row.last_error
        assert row.last_error_code == 190
    paused = account(services, WABA_A)
    assert paused.status == Account.PAUSED
    assert paused.status_reason is not None and "access token was rejected" in paused.status_reason
    assert account(services, WABA_B).status == Account.ACTIVE
    [record] = paused_records(caplog)
    assert record.levelno == logging.ERROR
    listed = cli.accounts()
    assert (listed[WABA_A]["status"], listed[WABA_B]["status"]) == ("paused", "active")

    # Another pass changes nothing and tells nobody again.
    requests_before = len(fake_graph.events_requests())
    Dispatcher(services).run_once()
    assert len(fake_graph.events_requests()) == requests_before
    assert len(paused_records(caplog)) == 1
    assert {r.attempts for r in conversions(services, WABA_A)} == {0}

    # A new token resumes the account; the next pass sends its events with it.
    fake_graph.valid_tokens.add(NEW_TOKEN_A)
    cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=NEW_TOKEN_A)
    stats = Dispatcher(services).run_once()

    assert stats.sent == 2
    assert {r.status for r in conversions(services, WABA_A)} == {Conversion.SENT}
    last = requests_by_dataset(fake_graph)[dataset_id_for(WABA_A)][-1]
    assert last["headers"]["Authorization"] == f"Bearer {NEW_TOKEN_A}"
    assert account(services, WABA_A).status == Account.ACTIVE
    assert fake_graph.accepted_event_ids().most_common(1)[0][1] == 1


def test_a_missing_permission_pauses_only_its_account(
    two_accounts: dict[str, list[str]],
    services: Services,
    fake_graph: FakeGraph,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_graph.tokens_without_permission.add(TOKEN_B)

    Dispatcher(services).run_once()

    assert {r.status for r in conversions(services, WABA_A)} == {Conversion.SENT}
    assert {r.status for r in conversions(services, WABA_B)} == {Conversion.PENDING}
    paused = account(services, WABA_B)
    assert paused.status == Account.PAUSED
    assert paused.status_reason is not None
    assert "whatsapp_business_manage_events" in paused.status_reason
    assert len(paused_records(caplog)) == 1


def test_a_waba_without_dataset_gets_one_automatically(
    cli: Cli,
    close_graph: Services,
    post_webhook: Callable[..., Any],
    fake_graph: FakeGraph,
) -> None:
    converse(post_webhook, WABA_B)  # registered by its webhook, with no dataset
    event_ids = enqueue_leads(close_graph, WABA_B)
    assert cli.accounts()[WABA_B]["dataset_id"] is None

    stats = Dispatcher(close_graph).run_once()

    assert stats.sent == 2
    assert fake_graph.datasets == {WABA_B: dataset_id_for(WABA_B)}
    assert account(close_graph, WABA_B).dataset_id == dataset_id_for(WABA_B)
    [request] = requests_by_dataset(fake_graph)[dataset_id_for(WABA_B)]
    assert sent_event_ids([request]) == set(event_ids)


def test_a_waba_whose_dataset_cannot_be_made_holds_its_events(
    cli: Cli,
    cli_env: pytest.MonkeyPatch,
    close_graph: Services,
    post_webhook: Callable[..., Any],
    fake_graph: FakeGraph,
) -> None:
    converse(post_webhook, WABA_B)
    enqueue_leads(close_graph, WABA_B)
    heal = fail_edge(
        cli_env, fake_graph, "dataset", status=403, code=200, message="(#200) Permissions"
    )

    stats = Dispatcher(close_graph).run_once()

    assert stats.sent == 0
    assert fake_graph.events_requests() == []
    for row in conversions(close_graph, WABA_B):
        assert (row.status, row.attempts) == (Conversion.PENDING, 0)
        assert row.last_error is not None
        assert f"`waconv provision-dataset --waba-id {WABA_B}`" in row.last_error
    assert account(close_graph, WABA_B).status == Account.ACTIVE

    # Once the operator provisions the dataset, the held events go out on the next pass.
    heal()
    result = cli.ok("provision-dataset", "--waba-id", WABA_B)
    assert "2 held events will be sent" in result.stdout

    assert Dispatcher(close_graph).run_once().sent == 2
    assert {r.status for r in conversions(close_graph, WABA_B)} == {Conversion.SENT}


def test_a_dataset_not_linked_to_the_waba_is_fixed_by_provisioning(
    cli: Cli,
    close_graph: Services,
    post_webhook: Callable[..., Any],
    fake_graph: FakeGraph,
) -> None:
    converse(post_webhook, WABA_A)
    enqueue_leads(close_graph, WABA_A)
    foreign = fake_graph.add_dataset(WABA_B)  # someone copied WABA B's dataset id
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--dataset-id", foreign)

    Dispatcher(close_graph).run_once()

    paused = cli.accounts()[WABA_A]
    assert paused["status"] == "paused"
    assert f"not linked to WhatsApp Business Account {WABA_A}" in paused["reason"]
    assert f"`waconv provision-dataset --waba-id {WABA_A}`" in paused["reason"]

    result = cli.ok("provision-dataset", "--waba-id", WABA_A)

    assert "account resumed" in result.stdout
    assert f"replaced dataset {foreign}" in result.stdout
    assert cli.accounts()[WABA_A]["status"] == "active"
    assert Dispatcher(close_graph).run_once().sent == 2
    assert requests_by_dataset(fake_graph)[dataset_id_for(WABA_A)][-1]["accepted"]


def test_a_dataset_the_token_cannot_reach_is_fixed_by_provisioning(
    cli: Cli,
    close_graph: Services,
    post_webhook: Callable[..., Any],
    fake_graph: FakeGraph,
) -> None:
    fake_graph.strict_datasets = True
    converse(post_webhook, WABA_A)
    enqueue_leads(close_graph, WABA_A)
    cli.ok("accounts", "set", "--waba-id", WABA_A, "--dataset-id", "424242424242")

    Dispatcher(close_graph).run_once()

    paused = cli.accounts()[WABA_A]
    assert paused["status"] == "paused"
    assert "cannot reach that dataset" in paused["reason"]

    cli.ok("provision-dataset", "--waba-id", WABA_A)

    assert Dispatcher(close_graph).run_once().sent == 2


def test_provisioning_does_not_resume_an_account_paused_for_its_token(
    cli: Cli, two_accounts: dict[str, list[str]], services: Services, fake_graph: FakeGraph
) -> None:
    fake_graph.valid_tokens.discard(TOKEN_A)
    Dispatcher(services).run_once()
    fake_graph.valid_tokens.add(TOKEN_A)  # the stored token works for the dataset call

    result = cli.ok("provision-dataset", "--waba-id", WABA_A)

    assert "resumed" not in result.stdout
    assert cli.accounts()[WABA_A]["status"] == "paused"


def test_an_account_without_any_token_holds_until_one_is_set(
    cli: Cli,
    make_app: Callable[..., Flask],
    fake_graph: FakeGraph,
) -> None:
    app = make_app(access_token="")  # no WACONV_ACCESS_TOKEN for the dispatcher either
    services: Services = app.extensions["waconv"]
    client = app.test_client()

    def post(payload: Any) -> Any:
        import json

        body = json.dumps(payload).encode()
        return client.post("/webhook", data=body, headers=signed_headers(body))

    converse(post, WABA_A)
    enqueue_leads(services, WABA_A)
    try:
        Dispatcher(services).run_once()
        for row in conversions(services, WABA_A):
            assert row.status == Conversion.PENDING
            assert row.last_error is not None
            assert f"`waconv accounts set-token --waba-id {WABA_A}`" in row.last_error

        fake_graph.valid_tokens.add(TOKEN_A)
        cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)
        stats = Dispatcher(services).run_once()
    finally:
        services.graph.close()

    assert stats.sent == 2  # provisioned with the new token, then sent; no 60-second wait
    assert {r.status for r in conversions(services, WABA_A)} == {Conversion.SENT}


def test_a_token_stored_under_another_key_holds_only_its_account(
    two_accounts: dict[str, list[str]],
    services: Services,
    make_settings: Callable[..., Any],
) -> None:
    other_key = make_settings(secret_key="the-key-of-another-install")
    with services.db.transaction() as session:
        found = registry.get_account(session, WABA_A)
        assert found is not None
        registry.set_token(session, found, TOKEN_A, other_key)

    stats = Dispatcher(services).run_once()  # does not stop at WABA A

    assert {r.status for r in conversions(services, WABA_B)} == {Conversion.SENT}
    assert stats.sent == 2
    for row in conversions(services, WABA_A):
        assert row.status == Conversion.PENDING
        assert row.last_error is not None
        assert row.last_error.startswith("held: ")
        assert "WACONV_SECRET_KEY" in row.last_error
        assert "waconv accounts set-token" in row.last_error
