"""CLI: provision-dataset, subscribe-app, accounts list / set-token / set.

Thin: parse, call :mod:`waconv.accounts.service`, shape the answer. A failure is one line on
stderr and exit code 1; no command ever prints or logs a token.
"""

from __future__ import annotations

import json
import sys

import click

from waconv.accounts import service
from waconv.accounts.service import AccountView
from waconv.cli import fail_cleanly, services_scope
from waconv.clock import isoformat
from waconv.config import DESTINATIONS

WABA_HELP = "WhatsApp Business Account id (default WACONV_WABA_ID)."
ARGV_WARNING = (
    "warning: a token given with --token is visible to other users in `ps` and stays in your "
    "shell history; prefer the prompt or --token-stdin"
)


def register(main: click.Group) -> None:
    """Add this feature's commands to the ``waconv`` group."""
    main.add_command(provision_dataset)
    main.add_command(subscribe_app)
    main.add_command(accounts)


@click.command("provision-dataset")
@click.option("--waba-id", default=None, metavar="ID", help=WABA_HELP)
@click.option("--name", default=None, help="Dataset name, used only when Meta creates it.")
@fail_cleanly
def provision_dataset(waba_id: str | None, name: str | None) -> None:
    """Get-or-create the WABA's dataset at Meta and store it; prints its id last.

    Calling it again is safe: Meta answers the same id. Uses the account's own token, else
    WACONV_ACCESS_TOKEN.
    """
    with services_scope() as services:
        waba = service.resolve_waba_id(services, waba_id)
        with services.graph as graph:
            done = service.provision_dataset(services, waba, name=name, graph=graph)
    if done.registered:
        click.echo(f"registered WhatsApp Business Account {waba}")
    if done.previous_dataset_id and done.previous_dataset_id != done.dataset_id:
        click.echo(f"replaced dataset {done.previous_dataset_id}")
    if done.resumed:
        click.echo("account resumed: it was paused for a dataset problem")
    if done.released:
        click.echo(f"{done.released} held events will be sent on the next dispatcher pass")
    click.echo(f"dataset of WhatsApp Business Account {waba}:")
    click.echo(done.dataset_id)


@click.command("subscribe-app")
@click.option("--waba-id", default=None, metavar="ID", help=WABA_HELP)
@fail_cleanly
def subscribe_app(waba_id: str | None) -> None:
    """Subscribe this app to the WABA's webhooks (POST /{WABA_ID}/subscribed_apps)."""
    with services_scope() as services:
        waba = service.resolve_waba_id(services, waba_id)
        with services.graph as graph:
            done = service.subscribe_app(services, waba, graph=graph)
    if done.registered:
        click.echo(f"registered WhatsApp Business Account {waba}")
    click.echo(f"subscribed: webhooks of WhatsApp Business Account {waba} now reach this app")


@click.group("accounts")
def accounts() -> None:
    """WhatsApp Business Accounts: their datasets, tokens and health."""


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@fail_cleanly
def accounts_list(as_json: bool) -> None:
    """Every account with its dataset, token source (never the token) and status."""
    with services_scope() as services:
        views = service.list_accounts(services)
    if as_json:
        click.echo(json.dumps([v.to_json() for v in views], indent=2))
        return
    if not views:
        click.echo(
            "no accounts yet: a WABA is registered by its first webhook or by "
            "`waconv provision-dataset --waba-id ID`"
        )
        return
    _print_table(views)
    unreadable = [v.waba_id for v in views if v.token_readable is False]
    if unreadable:
        click.echo(
            f"warning: WACONV_SECRET_KEY cannot decrypt the token of {', '.join(unreadable)}; "
            "set the key they were stored with, or store them again with "
            "`waconv accounts set-token`",
            err=True,
        )


def _print_table(views: list[AccountView]) -> None:
    header = ("WABA_ID", "DATASET_ID", "TOKEN", "DESTINATION", "STATUS", "REASON", "SINCE")
    rows = [header]
    for v in views:
        dataset = v.dataset_id or "-"
        if v.dataset_source == "env":
            dataset += " (env)"
        token = v.token + (", unreadable" if v.token_readable is False else "")
        rows.append(
            (
                v.waba_id,
                dataset,
                token,
                v.destination,
                v.status,
                v.reason or "-",
                isoformat(v.since) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


@accounts.command("set-token")
@click.option("--waba-id", default=None, metavar="ID", help=WABA_HELP)
@click.option(
    "--token-stdin", is_flag=True, help="Read the token from standard input (for scripts)."
)
@click.option(
    "--token",
    "argv_token",
    default=None,
    metavar="TOKEN",
    help="The token itself. Discouraged: visible in `ps` and shell history.",
)
@fail_cleanly
def accounts_set_token(waba_id: str | None, token_stdin: bool, argv_token: str | None) -> None:
    """Store the WABA's own access token, encrypted with WACONV_SECRET_KEY, and resume the
    account. The token is read from a hidden prompt on a terminal, else (or with
    --token-stdin) from standard input."""
    if token_stdin and argv_token is not None:
        raise click.UsageError("give the token with --token-stdin or --token, not both")
    with services_scope() as services:
        waba = service.resolve_waba_id(services, waba_id)
        if argv_token is not None:
            click.echo(ARGV_WARNING, err=True)
            token = argv_token
        elif token_stdin or not _stdin_is_terminal():
            # Piped in: read it as is (getpass would only warn that it cannot hide it).
            token = sys.stdin.read()
        else:
            token = click.prompt(
                f"Access token for WhatsApp Business Account {waba}",
                hide_input=True,
                prompt_suffix=": ",
            )
        done = service.set_token(services, waba, token)
    if done.registered:
        click.echo(f"registered WhatsApp Business Account {waba}")
    click.echo(f"stored the access token of WhatsApp Business Account {waba} (encrypted)")
    if done.resumed:
        click.echo("account resumed: it was paused")
    if done.released:
        click.echo(f"{done.released} held events will be sent on the next dispatcher pass")


@accounts.command("set")
@click.option("--waba-id", default=None, metavar="ID", help=WABA_HELP)
@click.option("--dataset-id", default=None, metavar="ID", help="The dataset linked to the WABA.")
@click.option(
    "--partner-agent", default=None, help="Sent as partner_agent; an empty string clears it."
)
@click.option("--ldu/--no-ldu", default=None, help="Limited Data Use for this account's events.")
@click.option("--ldu-country", type=click.IntRange(min=0), default=None, help="e.g. 1 (USA).")
@click.option("--ldu-state", type=click.IntRange(min=0), default=None, help="e.g. 1000 (CA).")
@click.option(
    "--destination",
    type=click.Choice(DESTINATIONS),
    default=None,
    help="Where the account's events go: the Graph API, a Conversions API Gateway, or both.",
)
@click.option("--gateway-url", default=None, metavar="URL", help="The Gateway's endpoint URL.")
@click.option(
    "--gateway-key-stdin",
    is_flag=True,
    help="Read the Gateway's access key from standard input (stored encrypted).",
)
@click.option(
    "--gateway-events",
    default=None,
    metavar="A,B",
    help="Only these events go to the Gateway, the others to Graph; an empty string clears it.",
)
@fail_cleanly
def accounts_set(
    waba_id: str | None,
    dataset_id: str | None,
    partner_agent: str | None,
    ldu: bool | None,
    ldu_country: int | None,
    ldu_state: int | None,
    destination: str | None,
    gateway_url: str | None,
    gateway_key_stdin: bool,
    gateway_events: str | None,
) -> None:
    """Change an account's dataset, partner agent, Limited Data Use or destination settings."""
    changes = (dataset_id, partner_agent, ldu, ldu_country, ldu_state, destination, gateway_url)
    if all(v is None for v in changes) and gateway_events is None and not gateway_key_stdin:
        raise click.UsageError(
            "nothing to change: give --dataset-id, --partner-agent, --ldu/--no-ldu, "
            "--ldu-country, --ldu-state, --destination, --gateway-url, --gateway-key-stdin "
            "or --gateway-events"
        )
    gateway_key = sys.stdin.read() if gateway_key_stdin else None
    with services_scope() as services:
        waba = service.resolve_waba_id(services, waba_id)
        view = service.update_account(
            services,
            waba,
            dataset_id=dataset_id,
            partner_agent=partner_agent,
            ldu=ldu,
            ldu_country=ldu_country,
            ldu_state=ldu_state,
            destination=destination,
            gateway_url=gateway_url,
            gateway_key=gateway_key,
            gateway_events=gateway_events,
        )
    click.echo(json.dumps(view.to_json(), indent=2))
