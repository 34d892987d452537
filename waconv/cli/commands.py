"""The core commands: db, webhooks replay, serve, dispatch, prune. Thin: they call the services."""

from __future__ import annotations

import logging
import sys

import click

from waconv.cli import Failure, fail_cleanly, settings_and_services
from waconv.config import warn_if_test_events

log = logging.getLogger(__name__)


def register(main: click.Group) -> None:
    """Add these commands to the ``waconv`` group."""
    for command in (db, webhooks, serve, dispatch, prune):
        main.add_command(command)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@fail_cleanly
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    from waconv import schema

    _, services = settings_and_services()  # also refuses a malformed rules file
    try:
        schema.upgrade(services.db.engine)
    finally:
        services.close()
    click.echo("database is at the newest schema")


@db.command("check")
@fail_cleanly
def db_check() -> None:
    """Fail when the models and the migrations disagree."""
    from alembic.util.exc import CommandError

    from waconv import schema

    _, services = settings_and_services()
    try:
        schema.check(services.db.engine)
    except CommandError as exc:
        raise Failure(str(exc)) from None
    finally:
        services.close()
    click.echo("models and migrations agree")


@click.group()
def webhooks() -> None:
    """Stored webhook deliveries."""


@webhooks.command("replay")
@click.option("--id", "ids", type=int, multiple=True, help="Delivery id (repeatable).")
@click.option(
    "--failed", "all_failed", is_flag=True, help="Every delivery whose processing failed."
)
@fail_cleanly
def webhooks_replay(ids: tuple[int, ...], all_failed: bool) -> None:
    """Process stored deliveries again (items already recorded are skipped)."""
    from waconv.webhooks.ingest import replay

    if not ids and not all_failed:
        raise click.UsageError("give --id ID or --failed")
    _, services = settings_and_services()
    try:
        results = replay(services, ids=ids, all_failed=all_failed)
    finally:
        services.close()
    failures = 0
    for result in results:
        if result.ok:
            click.echo(f"delivery {result.delivery_id}: processed")
        else:
            failures += 1
            click.echo(f"delivery {result.delivery_id}: failed: {result.error}")
    click.echo(f"{len(results)} replayed, {failures} failed")
    if failures:
        sys.exit(1)


@click.command("serve")
@click.option("--host", default=None, help="Address to bind (default HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default PORT or 8000).")
@click.option("--no-dispatcher", is_flag=True, help="Serve only; send nothing to Meta.")
@fail_cleanly
def serve(host: str | None, port: int | None, no_dispatcher: bool) -> None:
    """The app and a dispatcher beside it, for development (production: gunicorn)."""
    from waconv.devserver import run_dev_server

    run_dev_server(host=host, port=port, dispatcher=not no_dispatcher)


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@click.option(
    "--max-seconds",
    type=float,
    default=None,
    help="With --once: stop starting new batches after this long.",
)
@fail_cleanly
def dispatch(once: bool, max_seconds: float | None) -> None:
    """Send conversion events to Meta: due ones once (--once), or forever until SIGTERM."""
    import gc
    import signal
    import threading

    from sqlalchemy.exc import SQLAlchemyError

    from waconv.conversions.dispatcher import Dispatcher

    settings, services = settings_and_services()
    warn_if_test_events(settings)
    dispatcher = Dispatcher(services)
    # What start-up made (modules, app, settings) lives as long as the process: frozen out of
    # the garbage collector's reach, its full collections stop walking it again and again
    # while batches are built (bench/PROFILE.md: about a quarter of the CPU of each batch).
    gc.freeze()
    try:
        if once:
            try:
                stats = dispatcher.run_once(max_seconds=max_seconds)
            except SQLAlchemyError as exc:
                raise Failure(f"cannot reach the database: {type(exc).__name__}") from None
            click.echo(
                f"sent {stats.sent}, retrying {stats.retried}, failed {stats.failed}, "
                f"expired {stats.expired}, held {stats.held} in {stats.requests} requests"
            )
            for waba_id in stats.paused_accounts:
                click.echo(f"account {waba_id} paused; see `waconv accounts list`", err=True)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        dispatcher.run_forever(stop)
    finally:
        services.close()


@click.command("prune")
@click.option(
    "--days", type=int, default=None, help="Retention in days (default WACONV_RETENTION_DAYS)."
)
@fail_cleanly
def prune(days: int | None) -> None:
    """Remove raw deliveries and message texts older than the retention age."""
    from waconv.retention import prune as run_prune

    settings, services = settings_and_services()
    try:
        stats = run_prune(services, days=days if days is not None else settings.retention_days)
    except ValueError as exc:
        raise Failure(str(exc)) from None
    finally:
        services.close()
    click.echo(
        f"pruned {stats.deliveries} delivery bodies, {stats.messages} message texts, "
        f"{stats.statuses} statuses, {stats.notices} notices, {stats.requests} requests"
    )
