"""The ``neqforce`` command line (Typer): thin wrappers over library functions.

Each area registers its own commands: :mod:`neqforce.client.cli` (simulate, forces, info),
:mod:`neqforce.client.sweep_cli` (sweep), :mod:`neqforce.server.cli` (serve),
:mod:`neqforce.training.dataset_cli` (dataset generate) and :mod:`neqforce.training.cli` (train,
evaluate, export).

Every error a user can cause prints one line ``error: …`` on stderr (parse errors included, with
the command whose ``--help`` explains it) and exits non-zero; Ctrl-C exits with 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    """Ctrl-C while the CLI is still loading (imports take a second): one line, exit 130."""
    sys.stderr.write("\ninterrupted while starting; nothing was done\n")
    sys.stderr.flush()
    os._exit(130)


_STARTING = (threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
if _STARTING:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import typer  # noqa: E402  (after the start-up Ctrl-C handler on purpose)
from typer._click import exceptions as click_errors  # noqa: E402  (typer's own click)
from typer.core import TyperGroup  # noqa: E402

from neqforce import __version__, healthcheck  # noqa: E402
from neqforce.client import cli as client_cli  # noqa: E402
from neqforce.client import sweep_cli  # noqa: E402
from neqforce.server import cli as server_cli  # noqa: E402
from neqforce.training import cli as training_cli  # noqa: E402
from neqforce.training import dataset_cli, learn_cli  # noqa: E402

EXIT_INTERRUPTED = 130
#: click's Abort (Ctrl-C at a prompt), when this typer's click has one (typer >= 0.2x vendors a click
#: without it): an ``except`` naming a missing attribute would turn every other error into a traceback.
_ABORT: tuple[type[BaseException], ...] = tuple(
    e for e in [getattr(click_errors, "Abort", None)] if isinstance(e, type))


def _plain_label(param: Any, ctx: Any) -> str | None:
    """PATH, INT, FLOAT, TEXT, a|b choices; PATH... for repeatable values (typer shows <list[Path]>)."""
    try:
        label = str(param.display_type(ctx)).strip("<>")
    except Exception:  # noqa: BLE001 - a parameter typer cannot describe keeps its default
        return None
    repeat = label.startswith("list[") and label.endswith("]")
    label = label[5:-1] if repeat else label
    label = label.removesuffix(" range")
    label = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "path": "PATH",
             "file": "PATH", "directory": "DIR"}.get(label, label if "|" in label else label.upper())
    return f"{label}..." if repeat or getattr(param, "multiple", False) else label


def _plain_metavars(command: Any, ctx: Any) -> None:
    """Plain metavars and usage names everywhere (typer writes <list[Path]> and {INPUT})."""
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            name = str(param.metavar or param.name).upper()
            shown = name if param.required else f"[{name}]"
            shown += "..." if param.nargs != 1 else ""
            param._usage_display_name = (lambda text=shown: text)
        elif param.metavar is None and not getattr(param, "is_flag", False) \
                and not getattr(param, "count", False) and hasattr(param, "display_type"):
            param.metavar = _plain_label(param, ctx)
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub, ctx)


class _Group(TyperGroup):
    """The top-level group: plain metavars, and one-line errors instead of click's three-line usage."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        _plain_metavars(self, None)
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message())
            sys.exit(0)
        except click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "neqforce"
            message = " ".join(exc.format_message().split())
            typer.echo(f"error: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except _ABORT:
            typer.echo("\ninterrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(help="neqforce: surrogate force server for nonequilibrium lattice dynamics "
                       "(conventions: docs/physics.md).",
                  cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the neqforce version and exit.")) -> None:
    """neqforce: surrogate force server for nonequilibrium lattice dynamics (conventions:
    docs/physics.md)."""


@app.command()
def version() -> None:
    """Print the neqforce version (same as neqforce --version)."""
    typer.echo(__version__)


for _module in (client_cli, sweep_cli, server_cli, dataset_cli, training_cli, learn_cli, healthcheck):
    _module.register(app)

if _STARTING:  # loaded: from here on each command handles Ctrl-C itself (default: KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
