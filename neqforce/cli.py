"""The ``neqforce`` command line (Typer): thin wrappers over library functions.

Each area registers its own commands: :mod:`neqforce.client.cli` (simulate, forces, info),
:mod:`neqforce.server.cli` (serve), :mod:`neqforce.training.dataset_cli` (dataset generate) and
:mod:`neqforce.training.cli` (train, evaluate, export).
"""

from __future__ import annotations

import typer

from neqforce import __version__, healthcheck
from neqforce.client import cli as client_cli
from neqforce.client import sweep_cli
from neqforce.server import cli as server_cli
from neqforce.training import cli as training_cli
from neqforce.training import dataset_cli

app = typer.Typer(help="neqforce: surrogate force server for nonequilibrium lattice dynamics.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


@app.command()
def version() -> None:
    """Print the neqforce version."""
    typer.echo(__version__)


for _module in (client_cli, sweep_cli, server_cli, dataset_cli, training_cli, healthcheck):
    _module.register(app)
