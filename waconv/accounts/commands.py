"""CLI: provision-dataset, subscribe-app, accounts list / set-token."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this feature's commands to the ``waconv`` group."""
