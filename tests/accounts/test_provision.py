"""``waconv provision-dataset`` and ``waconv subscribe-app`` against the fake Graph API."""

from __future__ import annotations

import pytest

from tests.accounts.conftest import Cli, fail_edge
from tests.accounts.helpers import TOKEN_A, WABA_A, WABA_B
from tests.conftest import ACCESS_TOKEN
from waconv.graph.fake import FakeGraph, dataset_id_for

REVOKED = "EAAGrevokedSystemUserToken000111222333444555666777888"


def graph_calls(fake: FakeGraph, edge: str) -> list[dict[str, object]]:
    with fake.lock:
        return [r for r in fake.requests if r["kind"] == edge]


def test_provisioning_twice_gives_the_same_dataset(cli: Cli, fake_graph: FakeGraph) -> None:
    first = cli.ok("provision-dataset", "--waba-id", WABA_A)
    second = cli.ok("provision-dataset", "--waba-id", WABA_A)

    expected = dataset_id_for(WABA_A)
    assert first.stdout.splitlines()[-1] == expected
    assert second.stdout.splitlines()[-1] == expected
    assert f"registered WhatsApp Business Account {WABA_A}" in first.stdout
    assert "registered" not in second.stdout
    assert len(graph_calls(fake_graph, "dataset")) == 2  # Meta's get-or-create, asked twice
    account = cli.accounts()[WABA_A]
    assert account["dataset_id"] == expected
    assert account["status"] == "active"
    assert account["token"] == "default"


def test_the_default_waba_comes_from_the_environment(cli: Cli, cli_env: pytest.MonkeyPatch) -> None:
    cli_env.setenv("WACONV_WABA_ID", WABA_B)

    result = cli.ok("provision-dataset")

    assert result.stdout.splitlines()[-1] == dataset_id_for(WABA_B)
    assert cli.accounts()[WABA_B]["dataset_id"] == dataset_id_for(WABA_B)


def test_the_name_goes_to_meta(cli: Cli, fake_graph: FakeGraph) -> None:
    dataset = cli.ok("provision-dataset", "--waba-id", WABA_A, "--name", "Succulents WA")
    assert fake_graph.dataset_names[dataset.stdout.splitlines()[-1]] == "Succulents WA"


def test_without_any_waba_it_says_what_to_set(cli: Cli) -> None:
    line = cli.fails("provision-dataset")
    assert "--waba-id" in line
    assert "WACONV_WABA_ID" in line


@pytest.mark.parametrize("bad", ["abc", "12 34", "1" * 40, "../events", "\u0661\u0662"])
def test_a_waba_id_must_be_numeric(cli: Cli, fake_graph: FakeGraph, bad: str) -> None:
    assert "numeric" in cli.fails("provision-dataset", "--waba-id", bad)
    assert graph_calls(fake_graph, "dataset") == []


def test_a_revoked_token_says_to_set_a_new_one(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    cli_env.setenv("WACONV_ACCESS_TOKEN", REVOKED)  # not among the fake's valid tokens

    result = cli("provision-dataset", "--waba-id", WABA_A)

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "access token was rejected" in line
    assert f"`waconv accounts set-token --waba-id {WABA_A}`" in line
    assert "Meta error 190" in line
    assert REVOKED not in result.output
    assert cli.accounts() == {}  # a failed call registers nothing


def test_a_missing_permission_is_named(cli: Cli, fake_graph: FakeGraph) -> None:
    fake_graph.tokens_without_permission.add(ACCESS_TOKEN)

    line = cli.fails("provision-dataset", "--waba-id", WABA_A)

    assert "whatsapp_business_manage_events" in line
    assert "Meta error 200" in line
    assert ACCESS_TOKEN not in line


def test_a_dataset_the_token_cannot_reach(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    message = "Unsupported post request. Object with ID '1' cannot be loaded"
    fail_edge(cli_env, fake_graph, "dataset", status=400, code=100, subcode=33, message=message)

    line = cli.fails("provision-dataset", "--waba-id", WABA_A)

    assert "cannot reach that dataset" in line
    assert "UPLOAD" in line
    assert "Meta error 100/33" in line


def test_a_dataset_not_linked_to_the_waba(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    message = "No WhatsApp Business account linked to this dataset"
    fail_edge(
        cli_env, fake_graph, "dataset", status=400, code=100, subcode=2804132, message=message
    )

    line = cli.fails("provision-dataset", "--waba-id", WABA_A)

    assert f"not linked to WhatsApp Business Account {WABA_A}" in line
    assert "Meta error 100/2804132" in line


def test_an_unreachable_graph_api(cli: Cli, cli_env: pytest.MonkeyPatch) -> None:
    cli_env.setenv("WACONV_GRAPH_URL", "http://127.0.0.1:9")  # discard port: refused
    line = cli.fails("provision-dataset", "--waba-id", WABA_A)
    assert "could not reach the Graph API" in line


def test_without_any_token_it_says_which_to_set(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    cli_env.delenv("WACONV_ACCESS_TOKEN")

    line = cli.fails("provision-dataset", "--waba-id", WABA_A)

    assert "WACONV_ACCESS_TOKEN" in line
    assert f"waconv accounts set-token --waba-id {WABA_A}" in line
    assert graph_calls(fake_graph, "dataset") == []


def test_the_accounts_own_token_is_used(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    fake_graph.valid_tokens.add(TOKEN_A)
    cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)
    cli_env.setenv("WACONV_ACCESS_TOKEN", REVOKED)  # would fail if it were used

    result = cli.ok("provision-dataset", "--waba-id", WABA_A)

    [call] = graph_calls(fake_graph, "dataset")
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN_A}"  # type: ignore[index]
    assert TOKEN_A not in result.output


def test_subscribe_app(cli: Cli, fake_graph: FakeGraph) -> None:
    result = cli.ok("subscribe-app", "--waba-id", WABA_A)

    assert WABA_A in fake_graph.subscribed
    assert "subscribed" in result.stdout
    assert ACCESS_TOKEN not in result.output
    assert WABA_A in cli.accounts()


def test_subscribe_app_defaults_to_the_configured_waba(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    cli_env.setenv("WACONV_WABA_ID", WABA_B)
    cli.ok("subscribe-app")
    assert fake_graph.subscribed == {WABA_B}


def test_subscribe_app_without_permission(cli: Cli, fake_graph: FakeGraph) -> None:
    fake_graph.tokens_without_permission.add(ACCESS_TOKEN)

    line = cli.fails("subscribe-app", "--waba-id", WABA_A)

    assert line.startswith("error: cannot subscribe the app to the webhooks for WhatsApp")
    assert "whatsapp_business_management" in line
    assert ACCESS_TOKEN not in line
    assert fake_graph.subscribed == set()


def test_subscribe_app_with_a_revoked_token(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    cli_env.setenv("WACONV_ACCESS_TOKEN", REVOKED)
    line = cli.fails("subscribe-app", "--waba-id", WABA_A)
    assert f"`waconv accounts set-token --waba-id {WABA_A}`" in line
    assert REVOKED not in line
