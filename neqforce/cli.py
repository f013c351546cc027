"""The ``neqforce`` command line (Typer): thin wrappers over library functions."""

from __future__ import annotations

import typer

app = typer.Typer(help="neqforce: surrogate force server for nonequilibrium lattice dynamics.",
                  no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the neqforce version."""
    from neqforce import __version__

    typer.echo(__version__)
