"""The ``waconv`` command: one click group, and the helpers every command module shares.

A leaf: the command modules import this one, never the other way round at import time. The
group loads them when click first asks for a command.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from waconv.config import ConfigError, Settings, load_settings
from waconv.services import Services

F = TypeVar("F", bound=Callable[..., Any])

# Each has register(group) adding its commands.
COMMAND_MODULES = (
    "waconv.cli.commands",
    "waconv.accounts.commands",
    "waconv.admin.commands",
)


class Failure(click.ClickException):
    """A one-line reason on stderr and exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def fail_cleanly(func: F) -> F:
    """Turn what a user can fix (configuration, rules, accounts, refusals, an unreachable
    database) into one line on stderr and exit 1, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from waconv.accounts.service import AccountError
    from waconv.errors import APIError
    from waconv.rules import RulesError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, RulesError, AccountError) as exc:
            raise Failure(str(exc)) from None
        except APIError as exc:
            raise Failure(exc.message) from None
        except SQLAlchemyError as exc:
            raise Failure(f"database error: {type(exc).__name__}") from None

    return wrapper  # type: ignore[return-value]


def settings_and_services() -> tuple[Settings, Services]:
    from waconv.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    return settings, Services.build(settings)


@contextlib.contextmanager
def services_scope() -> Iterator[Services]:
    """Settings and services for one command, closed when it ends."""
    _, services = settings_and_services()
    try:
        yield services
    finally:
        services.close()


class _Group(click.Group):
    """The root group; it adds the command modules' commands when click first needs them."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for name in COMMAND_MODULES:
                importlib.import_module(name).register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Group)
def main() -> None:
    """waconv: WhatsApp click-to-WhatsApp conversations to Meta Conversions API events."""
