"""CLI command ``learn`` (registered by :mod:`neqforce.cli`): the active-learning loop of
:mod:`neqforce.training.learn`. torch is imported inside the command only."""

from __future__ import annotations

from pathlib import Path

import typer


def learn_cmd(
    data: list[Path] = typer.Argument(..., help="NEGF-BD dataset folder(s) or trajectory files every "
                                      "committee trains on (the labelled frames are added to them)."),
    out: Path = typer.Option(..., "--out", help="Learn folder: models/, labelled/, it*/, learn.jsonl."),
    voltage: str = typer.Option(..., help="Target voltages: a:b:step or a,b,c."),
    lx: str = typer.Option(..., help="Target lattice lengths (columns): a:b:step or a,b,c."),
    ly: str = typer.Option("28", help="Target lattice widths."),
    model: Path = typer.Option(None, help="Initial committee (.onnx; default: trained on DATA)."),
    members: int = typer.Option(3, help="Committee members (different seeds)."),
    threshold: float = typer.Option(None, help="Spread threshold, force units (default: each committee's "
                                    "calibrated one)."),
    top_k: int = typer.Option(0, help="Label the top-k spreads per point whatever the threshold (0: off)."),
    max_per_point: int = typer.Option(16, help="At most this many frames labelled per point and iteration."),
    max_spread: float = typer.Option(None, help="Upper trust bound, force units: frames with a larger spread "
                                     "(a run that left physical configurations) are never labelled."),
    pick: str = typer.Option("largest", help="Which frames above the threshold: 'largest' spreads first, or "
                             "'spaced' evenly over each point's exploration."),
    max_iterations: int = typer.Option(5, help="Stop after this many iterations."),
    seeds: int = typer.Option(2, help="ML-BD replicas per target point."),
    steps: int = typer.Option(200, help="ML-BD steps of each exploration run."),
    save_every: int = typer.Option(5, help="Explored frames: every this many steps."),
    dt: float = typer.Option(0.1, help="Time step (1/gamma, docs/physics.md)."),
    label_chunk: int = typer.Option(8, help="Frames per NEGF labelling task."),
    workers: int = typer.Option(None, help="Embedded Dask workers (default: one per core)."),
    scheduler: str = typer.Option(None, help="Existing Dask scheduler, tcp://HOST:PORT."),
    spread_target: float = typer.Option(None, help="Calibration target, force RMSE (default 0.0259)."),
    preset: str = typer.Option("voltage", help="Training preset of the members: 'voltage', 'range', or "
                               "a device-wide convolutional one (conv, the bundled model's; conv32, conv6, "
                               "gconv, gconv24; docs/ml_model.md, 'Presets')."),
    epochs: int = typer.Option(30, help="Training epochs per member."),
    hidden: str = typer.Option("", help="Override hidden widths, e.g. '32,64' (descriptor presets)."),
    r_cut: int = typer.Option(0, help="Override the cutoff radius (0: preset; descriptor presets)."),
    batch_size: int = typer.Option(1024, help="Sites per minibatch (descriptor presets; the conv presets "
                                   "batch ~6720 sites of whole frames)."),
    patience: int = typer.Option(8, help="Early stopping patience (epochs)."),
    train_workers: int = typer.Option(1, min=1, help="Train this many committee members side by side "
                                      "(processes of an embedded Dask cluster, one thread each)."),
    progress: bool = typer.Option(True, help="Progress bars."),
) -> None:
    """Active learning: explore with ML-BD at the target points, label with exact NEGF only the frames
    where the committee disagrees, retrain and re-export the committee; repeat until the spread is below
    the threshold everywhere (docs/ml_model.md, 'Active learning')."""
    try:
        from neqforce.training.learn import LearnOptions, run_learn

        train: dict = {"epochs": epochs, "batch_size": batch_size, "patience": patience}
        if preset != "voltage":  # recorded only when not the default: older learn folders still resume
            train["preset"] = preset
        if hidden:
            train["hidden"] = [int(h) for h in hidden.split(",")]
        if r_cut:
            train["r_cut"] = r_cut
        opts = LearnOptions(
            out=out, data=tuple(str(d) for d in data), grid={"voltage": voltage, "lx": lx, "ly": ly},
            model=str(model) if model else None, members=members, threshold=threshold, top_k=top_k,
            max_per_point=max_per_point, max_spread=max_spread, pick=pick,
            max_iterations=max_iterations, seeds=seeds, steps=steps,
            save_every=save_every, dt=dt, label_chunk=label_chunk, workers=workers, scheduler=scheduler,
            spread_target=spread_target, train=train, train_workers=train_workers,
            progress=progress)
        from neqforce.client.interrupt import Interrupts

        with Interrupts(bound_exit=True):  # a Ctrl-C swallowed by a finalizer still stops the loop
            run_learn(opts, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: everything written is valid; rerun the same command to resume ({out})",
                   err=True)
        raise typer.Exit(130) from None
    except (ValueError, KeyError, OSError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    except RuntimeError as exc:  # a failed exploration, labelling or training task
        typer.echo(f"error: {' '.join(str(exc).split())}; rerun the same command to resume", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add ``learn`` to the ``neqforce`` app."""
    app.command("learn")(learn_cmd)
