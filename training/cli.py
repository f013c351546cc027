"""CLI commands ``train``, ``evaluate``, ``export`` (registered by :mod:`neqforce.cli`).

torch is imported inside the command functions only, so ``neqforce --help`` and the server never
load it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _range(text: str, option: str) -> tuple[float, float]:
    """'MIN,MAX' → (min, max); ValueError with the option's name otherwise."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{option} takes MIN,MAX (two numbers), got {text!r}") from None
    if not lo <= hi:
        raise ValueError(f"{option}: MIN {lo:g} is above MAX {hi:g}")
    return lo, hi


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from None


def train_cmd(
    data: list[Path] = typer.Argument(..., help="Dataset folder(s) or trajectory files (.h5)."),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt, last.pt, history.json."),
    preset: str = typer.Option("compact", help="Architecture: 'compact' (default), 'paper' (Table I) or "
                               "'voltage' (V and metallic runs as inputs: several voltages and lengths), "
                               "'range', or 'conv' / 'conv32' / 'conv6' (device-wide dilated convolutions "
                               "on whole frames, V as input; the y-mirror by averaging two passes) or "
                               "'gconv' / 'gconv24' (the same with mirror-paired channels: one pass)."),
    descriptor: str = typer.Option("", help="Override the descriptor: paper, device, paper+elec."),
    hidden: str = typer.Option("", help="Override hidden widths, e.g. '64,64'."),
    activation: str = typer.Option("", help="Override activation: relu, silu, tanh, gelu."),
    anti_rank: int = typer.Option(-1, help="Override the A'' block: 0 C_s-averaged first layer, "
                                  "K > 0 K learned quadratic invariants (-1: preset)."),
    r_cut: int = typer.Option(0, min=0, help="Override the cutoff radius (0: preset, 6)."),
    epochs: int = typer.Option(30, min=1),
    lr: float = typer.Option(2e-3, help="Adam learning rate (cosine-decayed to lr_min)."),
    lr_min: float = typer.Option(2e-5),
    batch_size: int = typer.Option(1024, min=1, help="Sites per minibatch (descriptor presets; "
                            "the conv presets batch ~6720 sites of whole frames)."),
    weight_decay: float = typer.Option(0.0, min=0.0, help="Adam weight decay (L2)."),
    patience: int = typer.Option(8, min=1, help="Early stopping: epochs without validation improvement."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …"),
    test_fraction: float = typer.Option(0.3, min=0.0, max=0.9, help="Fraction of trajectories held out."),
    test_ids: str = typer.Option("", help="Explicit test trajectories, e.g. 'V3.000_s4,V3.000_s5'."),
    voltage: float = typer.Option(None, help="Use only trajectories at this voltage (default: 3.0; all "
                                  "voltages for a preset with a voltage input)."),
    voltage_range: str = typer.Option("", help="Use trajectories with V in MIN,MAX (e.g. '2.0,4.0'); needs a "
                                      "preset with a voltage input."),
    stride: int = typer.Option(1, min=1, help="Use every stride-th frame."),
    max_step: int = typer.Option(0, min=0, help="Use frames up to this BD step only (0: all)."),
    max_minutes: float = typer.Option(0.0, min=0.0, help="Stop after this many minutes (0: no limit)."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads (0: default)."),
    weight_long: float = typer.Option(1.0, min=0.0, help="Loss weight of the sites of lattices longer than "
                                      "the shortest one in the data (1: every site alike; the validation "
                                      "loss stays per-site)."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
    init: Path = typer.Option(None, "--init", help="Fine-tune: start from the weights (and normalization) of "
                              "this model.pt of the same preset, with a new optimizer and learning-rate "
                              "schedule (a warm restart; give a smaller --lr). Recorded by its sha256."),
    allow_incomplete: bool = typer.Option(False, help="Train on trajectories still being generated "
                                          "(the model records the dataset as partial)."),
    teacher: list[Path] = typer.Option(None, "--teacher", help="Distillation (conv presets): a member "
                                       "checkpoint of the committee to learn from (repeat for each). The "
                                       "network gets a spread head fitted to the committee's per-site std "
                                       "and is exported with force_std like a committee."),
    distill_weight: float = typer.Option(0.5, min=0.0, max=1.0, help="With --teacher: share of the force "
                                         "loss on labelled frames fitted to the teacher's mean (the rest "
                                         "to the NEGF labels)."),
    transfer: list[Path] = typer.Option(None, "--transfer", help="With --teacher: unlabelled trajectories "
                                        "(folders or .h5 files, e.g. ML-BD runs of a sweep) whose frames are "
                                        "fitted to the teacher only (never used for validation)."),
    spread_weight: float = typer.Option(1.0, min=0.0, help="With --teacher: weight of the spread head's "
                                        "loss."),
) -> None:
    """Train a force model on NEGF-BD trajectories (split 70/30 by trajectory)."""
    try:
        from neqforce.physics import DEFAULT_V
        from neqforce.training.conv_train import CONV_PRESETS
        from neqforce.training.model import PRESETS
        from neqforce.training.train import TrainOptions, train

        widths = tuple(int(h) for h in hidden.split(",")) if hidden else None
        v_range = _range(voltage_range, "--voltage-range") if voltage_range else None
        if voltage is None and v_range is None:
            takes_v = preset in CONV_PRESETS or (preset in PRESETS and PRESETS[preset].takes_voltage)
            voltage = None if takes_v else DEFAULT_V
        opts = TrainOptions(
            preset=preset, descriptor=descriptor or None, hidden=widths,
            activation=activation or None, anti_rank=None if anti_rank < 0 else anti_rank,
            r_cut=r_cut or None, epochs=epochs, lr=lr, lr_min=lr_min, batch_size=batch_size,
            weight_decay=weight_decay, patience=patience, seed=seed, device=device,
            test_fraction=test_fraction,
            test_ids=tuple(s.strip() for s in test_ids.split(",") if s.strip()), voltage=voltage,
            voltage_range=v_range,
            stride=stride, max_step=max_step or None, max_minutes=max_minutes, threads=threads,
            allow_incomplete=allow_incomplete, weight_long=weight_long,
            init=str(init) if init else None, teacher=tuple(str(t) for t in teacher or ()),
            distill_weight=distill_weight, transfer=tuple(str(t) for t in transfer or ()),
            spread_weight=spread_weight)
        from neqforce.client.interrupt import Interrupts

        with Interrupts(bound_exit=True):  # a Ctrl-C swallowed inside torch still stops at the next epoch
            train([str(d) for d in data], out, opts, resume=resume, log=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {out / 'last.pt'} holds the last finished epoch (written atomically); "
                   f"continue with the same command and --resume", err=True)
        raise typer.Exit(130) from None
    except (ValueError, KeyError, OSError) as exc:
        _fail(exc)


def evaluate_cmd(
    model: Path = typer.Argument(..., help="Model: .onnx file or training checkpoint (model.pt)."),
    data: list[Path] = typer.Argument(..., help="Dataset folder(s) or trajectory files (.h5)."),
    out: Path = typer.Option(Path("eval"), "--out",
                             help="Folder for metrics.json, parity.png, error_hist.png."),
    split: str = typer.Option("auto", help="auto, test, train or all trajectories, or validation (the "
                              "early-stopping blocks of every trajectory: compare models, no test set), "
                              "or validation-all (every frame training holds out, long-device ones "
                              "included: give the data in training's order)."),
    voltage: float = typer.Option(None, help="Voltage of the trajectories (default: the model's; every "
                                  "voltage of the data for a model with a voltage input)."),
    stride: int = typer.Option(1, min=1, help="Use every stride-th frame."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: default)."),
    f_max: float = typer.Option(None, min=1e-9, help="Fixed normalization F_max of the paper's metric "
                                "(e.g. 1.494; default: max |F_NEGF| of the evaluated frames)."),
) -> None:
    """Paper metrics (MSE and σ of forces rescaled to [-1, 1]) overall, per region and per (lattice, V),
    Fig. 2 PNGs, and for a committee the Spearman correlation of its spread with the actual error."""
    try:
        from neqforce.training.evaluate import evaluate

        evaluate(model, [str(d) for d in data], out, split=split, voltage=voltage, stride=stride,
                 threads=threads, log=typer.echo, f_max=f_max)
    except (ValueError, KeyError, OSError) as exc:
        _fail(exc)


def export_cmd(
    checkpoint: list[Path] = typer.Argument(..., help="Training checkpoint(s) (model.pt); several: their "
                                            "mean (an ensemble) in one graph."),
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    check: bool = typer.Option(True, help="Verify ONNX Runtime against torch on random lattices."),
    metrics: Path = typer.Option(None, help="metrics.json of a later 'neqforce evaluate' to store as the "
                                 "test metrics (default: those computed at the end of training)."),
    calibrate: list[Path] = typer.Option(None, help="Dataset(s) the members were trained on: calibrate the "
                                         "committee's spread threshold on their validation frames "
                                         "(repeatable; needs 2+ checkpoints)."),
    spread_target: float = typer.Option(None, min=0.0, help="Force RMSE the threshold is calibrated "
                                        "against (default sqrt(3e-4) * 1.494 = 0.0259)."),
) -> None:
    """Export a checkpoint to ONNX (descriptor + MLP + elastic term in one graph, SPEC §9)."""
    try:
        import json

        from neqforce.training.export import CHECK_TOL, export_checkpoint

        test_metrics = json.loads(metrics.read_text()) if metrics else None
        path, err, meta = export_checkpoint(list(checkpoint), out, check=check, metrics=test_metrics,
                                            calibrate=[str(c) for c in calibrate] if calibrate else None,
                                            spread_target=spread_target)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB), "
                   f"descriptor {meta['neqforce.descriptor']}")
        typer.echo(f"domain: {meta['neqforce.domain']}")
        if "neqforce.committee" in meta:
            com = json.loads(meta["neqforce.committee"])
            thr = com.get("spread_threshold")
            what = (f"committee of {com['members']}" if com["members"] > 1 else
                    "one network distilled from a committee (learned spread)")
            typer.echo(f"{what}: spread threshold "
                       + (f"{thr:.4g} (force units; {com.get('threshold_rule')}; Spearman(spread, error) "
                          f"on validation sites {com.get('spearman_sites', float('nan')):.3f})"
                          if thr is not None else "not calibrated (pass --calibrate DATA)"))
        if check:
            typer.echo(f"ONNX Runtime vs torch on random lattices: max |diff| / max(1, |F|) = {err:.2e} "
                       f"(tolerance {CHECK_TOL:.0e})")
    except (ValueError, KeyError, OSError) as exc:
        _fail(exc)


def respread_cmd(
    model: Path = typer.Argument(..., help="Committee .onnx exported before package 0.5.2 (force_std = the "
                                 "members' per-site std)."),
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    calibrate: list[Path] = typer.Option(None, help="Dataset(s) the members were trained on: recalibrate the "
                                         "spread threshold on their validation frames (repeatable; without "
                                         "it the threshold is dropped)."),
) -> None:
    """Give an exported committee the current spread (members' variance averaged over same-sublattice
    neighbours; docs/ml_model.md, 'Committee spread') without retraining: force and density unchanged."""
    try:
        from neqforce.training.respread import respread

        path, record = respread(model, out, [str(c) for c in calibrate] if calibrate else None)
        thr = record.get("spread_threshold")
        typer.echo(f"wrote {path}: force and density bit-for-bit those of {model}; spread threshold "
                   + (f"{thr:.4g} (force units; Spearman(spread, error) on validation sites "
                      f"{record['spearman_sites']:.3f}, frames {record['spearman_frames']:.3f})"
                      if thr is not None else "not calibrated (pass --calibrate DATA)"))
    except (ValueError, KeyError, OSError) as exc:
        _fail(exc)


def reexport_cmd(
    model: Path = typer.Argument(..., help="Model .onnx exported before package 0.5.3 (the gather graph)."),
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
) -> None:
    """Write an exported model with the current inference graph (convolutions; docs/ml_model.md, 'Inference
    graph and export'): the same weights and metadata, checked against the source with ONNX Runtime."""
    try:
        from neqforce.training.reexport import TOL, reexport

        path, err = reexport(model, out)
        typer.echo(f"wrote {path}: every output within {err:.1e} of {model} (relative to max(1, max|F|); "
                   f"tolerance {TOL:.0e}), same weights and metadata")
    except (ValueError, KeyError, OSError) as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate``, ``export``, ``respread`` and ``reexport`` to the ``neqforce`` app."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("export")(export_cmd)
    app.command("respread")(respread_cmd)
    app.command("reexport")(reexport_cmd)
