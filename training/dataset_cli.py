"""``neqforce dataset generate``: NEGF-BD training data (see :mod:`neqforce.training.dataset`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

dataset_app = typer.Typer(help="NEGF Brownian-dynamics datasets.", no_args_is_help=True)


@dataset_app.command("generate")
def generate(
    out: Path = typer.Argument(..., help="Dataset folder (created; an existing one is completed/resumed)."),
    preset: str = typer.Option("bundled", help="Recipe: bundled (30x28, ~1 h on 2 cores), heldout, "
                                 "heldout2 … heldout9 (frozen blind test sets), vrange, vhigh, vhigh2 "
                                 "(training data of the voltage-range model) or tiny (tests); docs in "
                                 "training/dataset.py."),
    workers: int = typer.Option(2, min=1, help="Worker processes of the embedded Dask cluster (one BLAS "
                                               "thread each)."),
    scheduler: str | None = typer.Option(None, help="tcp://HOST:8786 of a running Dask scheduler (default: "
                                                    "an embedded LocalCluster of --workers processes)."),
    seeds: str = typer.Option("", help="Override the seeds at DEFAULT_V, e.g. '0,1,2'."),
    steps: int = typer.Option(0, min=0, help="Override the number of BD steps of every run (0: preset)."),
) -> None:
    """Generate (or resume) an NEGF-BD dataset: Q, n and F per snapshot, with all parameters."""
    from dataclasses import replace

    from neqforce.physics import DEFAULT_V
    from neqforce.training.dataset import RunSpec, generate_dataset, preset_spec

    try:
        spec = preset_spec(preset)
        runs = spec.runs
        if seeds:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            n = max(r.n_steps for r in runs)
            runs = tuple(RunSpec(DEFAULT_V, s, n) for s in seed_list) + tuple(
                r for r in runs if r.voltage != DEFAULT_V)
        if steps:
            runs = tuple(replace(r, n_steps=steps) for r in runs)
        spec = replace(spec, runs=runs)
        generate_dataset(out, spec, workers=workers, scheduler=scheduler, echo=typer.echo)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RuntimeError, OSError, FloatingPointError) as exc:  # a failed run, or the cluster
        typer.echo(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; finished runs and every run's last checkpoint are kept in {out}. "
                   f"Continue with the same command.", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"dataset ready: {out}")


@dataset_app.command("pack")
def pack(
    src: Path = typer.Argument(
        ..., help="Dataset folder (*.h5 and dataset.json) or sweep folder (sweep.json, runs/)."),
    out: Path = typer.Argument(..., help="Pack folder to write (float32 Q and F, small enough for git)."),
) -> None:
    """Pack a dataset's complete runs into a compact folder (see neqforce.training.dataset_pack)."""
    from neqforce.training.dataset_pack import pack_dataset

    try:
        manifest = pack_dataset(src, out)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    left = manifest["skipped"]
    skipped = f"; not finished (pack again later): {', '.join(left)}" if left else ""
    typer.echo(f"packed {len(manifest['runs'])} runs into {out} ({size:.1f} MiB){skipped}")


@dataset_app.command("unpack")
def unpack(
    src: Path = typer.Argument(..., help="Pack folder written by `neqforce dataset pack`."),
    out: Path = typer.Argument(..., help="Folder to write trajectory files into (a sweep pack: its layout)."),
) -> None:
    """Rebuild trajectory files from a pack (hash-checked), readable by train and evaluate."""
    from neqforce.training.dataset_pack import unpack_dataset

    try:
        paths = unpack_dataset(src, out)
    except (ValueError, OSError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"unpacked {len(paths)} runs into {out}")


@dataset_app.command("label")
def label(
    sources: list[Path] = typer.Argument(..., help="Trajectory files of simulate/sweep runs."),
    out: Path = typer.Option(..., "--out", help="Labelled-frames folder (created; rerun to complete)."),
    min_metallic: int = typer.Option(0, min=0, help="Label frames with at least this many metallic columns."),
    max_metallic: int = typer.Option(None, min=0, help="... and at most this many (default: lx)."),
    per_run: int = typer.Option(8, min=1, help="At most this many frames per trajectory, evenly spread."),
    min_step: int = typer.Option(0, min=0, help="Only frames at this BD step or later."),
    chunk: int = typer.Option(4, min=1, help="Frames per NEGF task (and per output file)."),
    workers: int = typer.Option(None, min=1, help="Embedded Dask worker processes (default: one per core)."),
    scheduler: str | None = typer.Option(None, help="tcp://HOST:8786 of a running Dask scheduler."),
) -> None:
    """Label chosen frames of existing (e.g. ML-BD) trajectories with exact NEGF forces and densities."""
    from neqforce.training.label import label_trajectories

    _label_into(out, lambda: label_trajectories(
        sources, out, min_metallic=min_metallic, max_metallic=max_metallic, per_run=per_run,
        min_step=min_step, chunk=chunk, workers=workers, scheduler=scheduler, echo=typer.echo))


def _label_into(out: Path, label: Callable[[], list[Path]]) -> None:
    """Run a labelling job writing into ``out``: one-line errors (exit 2), Ctrl-C keeps every finished file
    (exit 130), and the count of files on success."""
    try:
        files = label()
    except (ValueError, OSError, KeyError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; every finished file in {out} is kept. Continue with the same command.",
                   err=True)
        raise typer.Exit(130) from None
    typer.echo(f"labelled {len(files)} file(s) in {out}")


@dataset_app.command("idealized")
def idealized(
    out: Path = typer.Argument(..., help="Labelled-frames folder (created; rerun to complete)."),
    lattice: list[str] = typer.Option(["80x28x24"], "--lattice",
                                      help="LXxLYxCOUNT: COUNT idealized domains on an LX x LY device "
                                           "(repeat the option for several lengths)."),
    seed: int = typer.Option(..., help="Seed of the family of draws (7 is reserved: bench/nonlocality.py)."),
    voltages: str = typer.Option("2.5,3.0,3.5,4.0", help="Voltages drawn from, comma-separated."),
    widths: str = typer.Option("", help="MIN:MAX metallic columns drawn from (default 12:lx-12)."),
    workers: int = typer.Option(None, min=1, help="Embedded Dask worker processes (default: one per core)."),
    scheduler: str | None = typer.Option(None, help="tcp://HOST:8786 of a running Dask scheduler."),
) -> None:
    """Label idealized metallic domains (straight or rough walls, smooth metal, ideal or noisy CDW) of long
    devices with exact NEGF: training frames of the corner no dynamics visits (training/idealized.py)."""
    from neqforce.training.idealized import label_idealized

    def run() -> list[Path]:
        lattices = []
        for item in lattice:
            parts = item.lower().split("x")
            if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"--lattice {item!r}: expected LXxLYxCOUNT, e.g. 80x28x24")
            lattices.append(tuple(int(p) for p in parts))
        vs = [float(v) for v in voltages.split(",") if v.strip()]
        if not vs:
            raise ValueError("--voltages is empty")
        w_range = None
        if widths:
            lo, sep, hi = widths.partition(":")
            if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
                raise ValueError(f"--widths {widths!r}: expected MIN:MAX, e.g. 44:76")
            w_range = (int(lo), int(hi))
        return label_idealized(out, lattices=lattices, seed=seed, voltages=vs, widths=w_range,
                               workers=workers, scheduler=scheduler, echo=typer.echo)

    _label_into(out, run)


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
