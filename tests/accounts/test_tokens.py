"""``waconv accounts set-token / list / set``: tokens are stored encrypted and never shown."""

from __future__ import annotations

import logging

import pytest

from tests.accounts.conftest import Cli, database_files, database_text
from tests.accounts.helpers import TOKEN_A, TOKEN_B, WABA_A, WABA_B
from tests.conftest import ACCESS_TOKEN, SECRET_KEY
from waconv.accounts import commands, registry
from waconv.accounts.crypto import TokenCipher
from waconv.config import ConfigError
from waconv.graph.fake import FakeGraph
from waconv.models import Account
from waconv.services import Services


def stored_ciphertext(services: Services, waba_id: str) -> str:
    with services.db.transaction() as session:
        account = registry.get_account(session, waba_id)
        assert account is not None and account.access_token_encrypted
        return account.access_token_encrypted


def test_set_token_from_the_hidden_prompt_stores_only_ciphertext(
    cli: Cli,
    services: Services,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(commands, "_stdin_is_terminal", lambda: True)

    result = cli.ok("accounts", "set-token", "--waba-id", WABA_A, input=f"{TOKEN_A}\n")
    table = cli.ok("accounts", "list")
    as_json = cli.ok("accounts", "list", "--json")

    assert f"Access token for WhatsApp Business Account {WABA_A}: " in result.stdout
    assert "stored the access token" in result.stdout
    ciphertext = stored_ciphertext(services, WABA_A)
    assert TokenCipher(SECRET_KEY).decrypt(ciphertext) == TOKEN_A
    # The raw value is nowhere: not in any column of any table, not in the database files,
    # not in the log records, not in anything the CLI printed.
    assert TOKEN_A not in database_text(db_url)
    raw = database_files(db_url)
    assert TOKEN_A.encode() not in raw
    if db_url.startswith("sqlite"):
        assert WABA_A.encode() in raw  # the files were read where the account lives
    assert TOKEN_A not in caplog.text
    for record in caplog.records:
        assert TOKEN_A not in record.getMessage()
    for printed in (result, table, as_json):
        assert TOKEN_A not in printed.output
    assert cli.accounts()[WABA_A]["token"] == "own"
    assert "own" in table.stdout.splitlines()[1]


def test_piped_in_without_option_it_reads_stdin_without_prompt(
    cli: Cli, services: Services
) -> None:
    result = cli.ok("accounts", "set-token", "--waba-id", WABA_A, input=f"{TOKEN_A}\n")
    assert "Access token for" not in result.output
    assert TokenCipher(SECRET_KEY).decrypt(stored_ciphertext(services, WABA_A)) == TOKEN_A


def test_set_token_from_stdin(cli: Cli, services: Services) -> None:
    result = cli.ok(
        "accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=f"  {TOKEN_A}\n"
    )
    assert TOKEN_A not in result.output
    assert TokenCipher(SECRET_KEY).decrypt(stored_ciphertext(services, WABA_A)) == TOKEN_A


def test_a_token_on_the_command_line_works_with_a_warning(cli: Cli, services: Services) -> None:
    result = cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token", TOKEN_A)
    assert "visible to other users in `ps`" in result.stderr
    assert TOKEN_A not in result.output
    assert TokenCipher(SECRET_KEY).decrypt(stored_ciphertext(services, WABA_A)) == TOKEN_A


def test_set_token_defaults_to_the_configured_waba(cli: Cli, cli_env: pytest.MonkeyPatch) -> None:
    cli_env.setenv("WACONV_WABA_ID", WABA_B)
    cli.ok("accounts", "set-token", "--token-stdin", input=TOKEN_B)
    assert cli.accounts()[WABA_B]["token"] == "own"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [("", "empty"), ("   \n", "empty"), ("EAAG abc", "one line"), ("EAAG\x00abc", "one line")],
)
def test_an_unusable_token_is_refused(cli: Cli, given: str, complaint: str) -> None:
    line = cli.fails("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=given)
    assert complaint in line
    assert cli.accounts() == {}


def test_set_token_needs_the_secret_key(cli: Cli, cli_env: pytest.MonkeyPatch) -> None:
    cli_env.delenv("WACONV_SECRET_KEY")

    line = cli.fails("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)

    assert "WACONV_SECRET_KEY must be set" in line
    assert TOKEN_A not in line
    assert cli.accounts() == {}


def test_a_wrong_secret_key_is_named(
    cli: Cli, cli_env: pytest.MonkeyPatch, fake_graph: FakeGraph
) -> None:
    fake_graph.valid_tokens.add(TOKEN_A)
    cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)
    cli_env.setenv("WACONV_SECRET_KEY", "another-key")

    line = cli.fails("provision-dataset", "--waba-id", WABA_A)
    listed = cli.ok("accounts", "list")

    assert "cannot be decrypted" in line
    assert "WACONV_SECRET_KEY" in line
    assert "waconv accounts set-token" in line
    assert "own, unreadable" in listed.stdout
    assert "WACONV_SECRET_KEY cannot decrypt the token of" in listed.stderr
    assert cli.accounts()[WABA_A]["token_readable"] is False
    assert TOKEN_A not in line + listed.output
    assert fake_graph.requests == []


def test_set_token_resumes_a_paused_account(cli: Cli, services: Services) -> None:
    with services.db.transaction() as session:
        account = registry.get_or_create_account(session, WABA_A)
        registry.pause(
            account, "cannot send events: the access token was rejected (Meta error 190)"
        )
    assert cli.accounts()[WABA_A]["status"] == "paused"

    result = cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)

    assert "account resumed" in result.stdout
    row = cli.accounts()[WABA_A]
    assert row["status"] == "active"
    assert row["reason"] is None


def test_the_list_says_where_each_token_comes_from(
    cli: Cli, cli_env: pytest.MonkeyPatch, services: Services
) -> None:
    cli.ok("accounts", "set-token", "--waba-id", WABA_A, "--token-stdin", input=TOKEN_A)
    with services.db.transaction() as session:
        registry.get_or_create_account(session, WABA_B)

    assert {k: v["token"] for k, v in cli.accounts().items()} == {
        WABA_A: "own",
        WABA_B: "default",
    }
    cli_env.delenv("WACONV_ACCESS_TOKEN")
    table = cli.ok("accounts", "list").stdout.splitlines()

    header, *rows = table
    assert header.split() == [
        "WABA_ID",
        "DATASET_ID",
        "TOKEN",
        "DESTINATION",
        "STATUS",
        "REASON",
        "SINCE",
    ]
    assert rows[0].split()[:5] == [WABA_A, "-", "own", "graph", "active"]
    assert rows[1].split()[:5] == [WABA_B, "-", "none", "graph", "active"]
    assert all(TOKEN_A not in line and ACCESS_TOKEN not in line for line in table)


def test_the_list_shows_the_reason_and_since(cli: Cli, services: Services) -> None:
    reason = "cannot send events: the token lacks a permission (Meta error 200, HTTP 403)"
    with services.db.transaction() as session:
        account = registry.get_or_create_account(session, WABA_A)
        registry.pause(account, reason)
        since = account.status_changed_at
    assert since is not None

    row = cli.accounts()[WABA_A]
    table = cli.ok("accounts", "list").stdout

    assert row["status"] == Account.PAUSED
    assert row["reason"] == reason
    assert row["since"] == since.isoformat().replace("+00:00", "Z")
    assert reason in table
    assert row["since"] in table


def test_an_empty_list_says_how_accounts_appear(cli: Cli) -> None:
    assert "no accounts yet" in cli.ok("accounts", "list").stdout
    assert cli.ok("accounts", "list", "--json").stdout.strip() == "[]"


def test_accounts_set_changes_the_sending_settings(
    cli: Cli, services: Services, cli_env: pytest.MonkeyPatch
) -> None:
    cli.ok(
        "accounts",
        "set",
        "--waba-id",
        WABA_A,
        "--dataset-id",
        "123456789",
        "--partner-agent",
        "agency-x",
        "--ldu",
        "--ldu-country",
        "1",
        "--ldu-state",
        "1000",
    )

    with services.db.transaction() as session:
        account = registry.get_account(session, WABA_A)
        assert account is not None
        creds = registry.credentials(account, services.settings)
    assert creds.dataset_id == "123456789"
    assert creds.partner_agent == "agency-x"
    assert (creds.ldu, creds.ldu_country, creds.ldu_state) == (True, 1, 1000)

    cli.ok("accounts", "set", "--waba-id", WABA_A, "--partner-agent", "", "--no-ldu")
    row = cli.accounts()[WABA_A]
    assert (row["partner_agent"], row["ldu"], row["dataset_id"]) == (None, False, "123456789")


def test_accounts_set_refuses_nothing_and_bad_ids(cli: Cli) -> None:
    assert cli("accounts", "set", "--waba-id", WABA_A).exit_code == 2
    assert "numeric" in cli.fails("accounts", "set", "--waba-id", WABA_A, "--dataset-id", "x1")


def test_the_env_dataset_shows_for_the_default_waba(
    cli: Cli, cli_env: pytest.MonkeyPatch, services: Services
) -> None:
    cli_env.setenv("WACONV_WABA_ID", WABA_A)
    cli_env.setenv("WACONV_DATASET_ID", "555000111")
    with services.db.transaction() as session:
        registry.get_or_create_account(session, WABA_A)

    row = cli.accounts()[WABA_A]

    assert (row["dataset_id"], row["dataset_source"]) == ("555000111", "env")
    assert "555000111 (env)" in cli.ok("accounts", "list").stdout


def test_the_cipher_refuses_an_empty_key() -> None:
    with pytest.raises(ConfigError, match="WACONV_SECRET_KEY"):
        TokenCipher("")
