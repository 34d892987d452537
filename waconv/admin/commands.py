"""CLI: conversions mark / list (the admin API from a shell)."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this feature's commands to the ``waconv`` group."""
