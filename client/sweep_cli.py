"""``neqforce sweep``: a thin wrapper over :func:`neqforce.client.sweep.run_sweep`.

Errors a user can fix print one line ``error: ...`` and exit 2 (an unknown ``--NAME`` included:
the sweep takes any HolsteinParams field as ``--NAME SPEC``); failures exit 1; Ctrl-C exits 130
after the tasks have checkpointed, printing the resume command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, _error, _guarded

_PHYS = "Grid: a:b:step (inclusive), a,b,c or one value, for any HolsteinParams field"
_FORCES = "Forces"
_DASK = "Dask"


def _extra_params(args: list[str]) -> dict[str, str]:
    """Leftover ``--name value`` pairs: grid fields without a dedicated option (or unknown names)."""
    from .sweep_grid import param_names

    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key not in param_names():
            raise ValueError(f"unknown parameter {name!r}; known: {', '.join(param_names())}")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"--{name} needs a value (a:b:step, a,b,c or a value)")
            value = args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the ``neqforce`` app."""

    @app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def sweep(
        ctx: typer.Context,
        out: Path = typer.Option(Path("runs/sweep"), "--out", "-o",
                                 help="Sweep folder (sweep.json, runs/<point>/seed<k>/trajectory.h5, "
                                      "summary.csv, phase_diagram.png, xi_families.png)."),
        seeds: int = typer.Option(8, help="Seeds per point: F … F+N-1 with F = --first-seed (seed s is "
                                  "`simulate --seed s`)."),
        first_seed: int = typer.Option(0, "--first-seed", help="First seed of every point (e.g. seeds never "
                                       "used in training data)."),
        steps: int = typer.Option(600, help="BD steps of every run."),
        dt: float = typer.Option(0.1, help="Time step in 1/gamma."),
        save_every: int = typer.Option(10, "--save-every", help="Store Q, F, n every this many steps."),
        checkpoint_every: int = typer.Option(50, "--checkpoint-every",
                                             help="Checkpoint every run this often (and once a minute)."),
        plots: bool = typer.Option(True, "--plots/--no-plots",
                                   help="Write phase_diagram.png and xi_families.png."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
        backend: str = typer.Option("auto", rich_help_panel=_FORCES,
                                    help="auto (a model covering the point, else exact NEGF), onnx or negf."),
        server: str | None = typer.Option(None, rich_help_panel=_FORCES,
                                          help="HOST:PORT of a force server shared by all workers (default: "
                                               "forces computed inside each worker)."),
        token: str | None = typer.Option(None, envvar="NEQFORCE_TOKEN", rich_help_panel=_FORCES,
                                         help="Bearer token of --server (env NEQFORCE_TOKEN)."),
        tls_ca: Path | None = typer.Option(None, "--tls-ca", rich_help_panel=_FORCES,
                                           help="PEM CA certificate of --server."),
        model: Path | None = typer.Option(None, rich_help_panel=_FORCES,
                                          help="ONNX model the workers load (default: the bundled model)."),
        timeout: float = typer.Option(300.0, rich_help_panel=_FORCES, help="Seconds per --server response."),
        scheduler: str | None = typer.Option(None, rich_help_panel=_DASK,
                                             help="tcp://HOST:8786 of a running Dask scheduler (default: an "
                                                  "embedded LocalCluster sized to this machine)."),
        workers: int | None = typer.Option(None, rich_help_panel=_DASK,
                                           help="Worker processes of the embedded cluster (default: cores)."),
        chunk: int | None = typer.Option(None, rich_help_panel=_DASK,
                                         help="Most replicas per task (default: NEGF 1; ML all seeds of a "
                                              "point, split to keep every worker busy)."),
        lx: str | None = typer.Option(None, rich_help_panel=_PHYS, help="Sites along x (30)."),
        ly: str | None = typer.Option(None, rich_help_panel=_PHYS, help="Sites along y (28)."),
        voltage: str | None = typer.Option(None, "--voltage", "-V", rich_help_panel=_PHYS,
                                           help="Bias V, e.g. 2.0:4.0:0.25 (3.0)."),
        temperature: str | None = typer.Option(None, "--temperature", "-T", rich_help_panel=_PHYS,
                                               help="Temperature (0.1)."),
    ) -> None:
        """Ensembles of BD runs over a parameter grid on Dask: one trajectory.h5 per (point, seed),
        replicas batched per force call, summary.csv and the dynamical phase diagram. Other fields:
        --t, --g, --k, --kappa, --gamma-lead, --gamma-bath (same syntax). Rerun to resume."""
        from .sweep import SweepOptions, resume_command, run_sweep

        try:
            grid = {k: v for k, v in {"lx": lx, "ly": ly, "voltage": voltage,
                                      "temperature": temperature}.items() if v is not None}
            extra = _extra_params(list(ctx.args))
        except ValueError as exc:
            raise _error(str(exc)) from None
        twice = sorted(set(grid) & set(extra))
        if twice:
            raise _error(f"--{twice[0]} given twice")
        grid |= extra
        from .sweep_grid import param_names

        grid = {k: grid[k] for k in param_names() if k in grid}
        opts = SweepOptions(out=out, grid=grid, seeds=seeds, first_seed=first_seed, steps=steps, dt=dt,
                            save_every=save_every,
                            checkpoint_every=checkpoint_every, backend=backend, server=server, token=token,
                            tls_ca=str(tls_ca) if tls_ca else None, model=str(model) if model else None,
                            timeout=timeout, scheduler=scheduler, workers=workers, chunk=chunk, plots=plots,
                            progress=progress)
        try:
            report = _guarded(run_sweep, opts, echo=typer.echo)
        except KeyboardInterrupt as exc:
            rep = getattr(exc, "report", None)
            where = f" ({rep.runs_complete} of {rep.runs_total} runs complete)" if rep is not None else ""
            typer.echo(f"\ninterrupted{where}; every run is saved at its last checkpoint in {out}. "
                       f"Continue with:\n  {resume_command(opts)}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as exc:  # a failure inside a Dask task or the cluster: one line
            raise _error(" ".join(str(exc).split()) or type(exc).__name__, EXIT_FAILURE) from None
        typer.echo(f"done: {report.runs_complete}/{report.runs_total} runs complete, {report.replica_steps} "
                   f"new replica-steps in {report.wall_s:.1f} s")
        for t in report.thresholds:
            fam = ", ".join(f"{k} = {v:g}" for k, v in t["family"].items())
            typer.echo(f"threshold {t['parameter']}{f' ({fam})' if fam else ''}: {t['text']} "
                       f"(switched fraction crosses 1/2)")
        for p in report.written:
            typer.echo(f"  {p}")


__all__ = ["register", "EXIT_USAGE"]
