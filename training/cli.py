"""CLI commands of this subpackage (registered by :mod:`neqforce.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the ``neqforce`` app."""
