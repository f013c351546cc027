"""``neqforce learn``: the active-learning loop (explore – select – label – train – export), DP-GEN style.

    from neqforce.training.learn import LearnOptions, run_learn
    run_learn(LearnOptions(out=Path("runs/learn"), data=("data/vrange",),
                           grid={"voltage": "2.0:4.0:0.5", "lx": "30,60", "ly": "28"}))

Iteration k, with the committee ``models/it{k}.onnx`` (``it000``: ``model``, or trained on ``data`` in
``init/train``):

1. **explore**: ML Brownian dynamics at every target point (the ``grid``: voltages × lattice lengths) with
   the sweep engine (:func:`neqforce.client.sweep.run_sweep`, Dask, in-worker ONNX forces, ``seeds``
   replicas per point, a frame every ``save_every`` steps) into ``it{k}/explore``;
2. **select**: the committee's largest per-site spread max_i σ_i (force units) of every explored frame;
   per point the frames above the threshold (the model's calibrated one, or ``threshold``), largest
   first, at most ``max_per_point`` (or the ``top_k`` largest); ``it{k}/selection.json``. When no point
   has a frame above the threshold, the loop has converged and stops;
3. **label**: exact NEGF forces of the selected frames only, as Dask tasks (one BLAS thread each), appended
   to ``labelled/`` (:mod:`neqforce.training.learn_frames`);
4. **train**: ``members`` committee members (seeds 0..members-1) on ``data`` + ``labelled/`` with the
   library :func:`~neqforce.training.train.train` (``it{k}/train/m{i}``);
5. **export**: ``models/it{k+1}.onnx`` with the spread threshold calibrated on the members' validation
   frames (:func:`~neqforce.training.export.export_checkpoint`).

Each iteration is logged in ``learn.jsonl`` (and ``learn.json``, the loop's state) and printed: frames
explored, frames labelled, NEGF core-hours, validation error, max spread per point. Every file is written
atomically or checkpointed (sweep, training); Ctrl-C leaves everything valid and rerunning the same
command resumes: finished steps are skipped (a finished exploration, selection, label file, member or
export is never redone).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.atomic import atomic_write_text
from neqforce.client.interrupt import safe_point
from neqforce.runlock import FolderLock
from neqforce.trajectory import read_trajectory, software_versions

from .learn_frames import (
    Candidate,
    frame_spreads,
    label_jobs,
    labelled_digests,
    select_frames,
)

Echo = Callable[[str], None]
STATE = "learn.json"
LOG = "learn.jsonl"
FORMAT = "neqforce.learn/1"


#: Descriptor presets with a voltage input (the conv presets, training/conv_train.py, all take V).
LEARN_PRESETS = ("voltage", "range")


def require_learn_preset(preset: str) -> None:
    """Refuse a training preset whose committee cannot explore (no voltage input, or no ONNX export)."""
    from .conv_train import CONV_PRESETS

    known = (*LEARN_PRESETS, *CONV_PRESETS)
    if preset not in known:
        raise ValueError(f"--preset must be one of {', '.join(known)} (a committee with a voltage "
                         f"input that exports to ONNX), got {preset!r}")


@dataclass
class LearnOptions:
    """Everything ``neqforce learn`` can be told (see the module docstring)."""

    out: Path
    data: tuple[str, ...]  # NEGF-BD datasets (folders or trajectory files) every committee trains on
    grid: dict[str, str]  # target points: {"voltage": "2:4:0.5", "lx": "30,60", "ly": "28"}
    model: str | None = None  # initial committee (.onnx); None: trained on ``data`` at iteration 0
    members: int = 3
    threshold: float | None = None  # spread threshold (force units); None: each model's calibrated one
    top_k: int = 0  # > 0: label the top_k largest spreads per point, whatever the threshold
    max_per_point: int = 16
    max_spread: float | None = None  # upper trust bound: frames with a larger spread are never labelled
    pick: str = "largest"  # "largest" spreads first, or "spaced" over the eligible frames
    max_iterations: int = 5
    seeds: int = 2
    steps: int = 200
    save_every: int = 5
    dt: float = 0.1
    label_chunk: int = 8  # frames per labelling task
    workers: int | None = None
    scheduler: str | None = None
    spread_target: float | None = None  # calibration target (force RMSE); None: the issue's
    train: dict[str, Any] = field(default_factory=dict)  # TrainOptions overrides (preset voltage)
    train_workers: int = 1  # members trained side by side in this many processes (embedded Dask)
    progress: bool = True


@dataclass
class LearnReport:
    out: Path
    iterations: list[dict[str, Any]]
    converged: bool
    model: Path


def _check(opts: LearnOptions) -> None:
    if opts.members < 2:
        raise ValueError(f"--members must be >= 2 (a committee), got {opts.members}")
    if opts.max_iterations < 0:
        raise ValueError(f"--max-iterations must be >= 0 (0: the first committee only), got "
                         f"{opts.max_iterations}")
    if opts.max_per_point < 1 or opts.label_chunk < 1:
        raise ValueError("--max-per-point and --label-chunk must be >= 1")
    if opts.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {opts.top_k}")
    if opts.max_spread is not None and not (math.isfinite(opts.max_spread) and opts.max_spread > 0):
        raise ValueError(f"--max-spread must be a positive number of force units, got {opts.max_spread}")
    if opts.pick not in ("largest", "spaced"):
        raise ValueError(f"--pick must be 'largest' or 'spaced', got {opts.pick!r}")
    if opts.threshold is not None and not (math.isfinite(opts.threshold) and opts.threshold > 0):
        raise ValueError(f"--threshold must be a positive number of force units, got {opts.threshold}")
    if not opts.data:
        raise ValueError("give the NEGF-BD data the committee trains on (one or more dataset folders)")
    if opts.model is not None and not Path(opts.model).is_file():
        raise ValueError(f"model file not found: {opts.model}")
    require_learn_preset(opts.train.get("preset", "voltage"))
    from neqforce.client.sweep_grid import grid_points, parse_grid

    if not grid_points(parse_grid(opts.grid)):
        raise ValueError("no target point")


def _request(opts: LearnOptions) -> dict[str, Any]:
    """What must not change between a run and its resumption (max_iterations may grow; the selection
    options apply to the iterations still to run: a finished one keeps its ``selection.json``)."""
    keep = ("data", "grid", "model", "members", "seeds", "steps", "save_every", "dt", "label_chunk",
            "spread_target", "train")
    return json.loads(json.dumps({k: v for k, v in asdict(opts).items() if k in keep}, default=str))


def _write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / STATE, json.dumps(state, indent=1, sort_keys=True))
    atomic_write_text(out / LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in state["iterations"]))


def _load_state(out: Path, opts: LearnOptions) -> dict[str, Any]:
    request = _request(opts)
    path = out / STATE
    if path.exists():
        state = json.loads(path.read_text())
        if state.get("request") != request:
            diff = sorted(k for k in request if state.get("request", {}).get(k) != request[k])
            raise ValueError(f"{out} holds a learn run with other settings ({', '.join(diff)}); rerun it "
                             "with the same options, or use another --out")
        return state
    return {"format": FORMAT, "request": request, "versions": software_versions(), "iterations": []}


def model_path(out: Path, k: int) -> Path:
    return out / "models" / f"it{k:03d}.onnx"


def _load_model(path: Path) -> Any:
    from neqforce.server.backends.onnx import OnnxModel, unique_names

    return OnnxModel.load(path, unique_names([path])[0], threads=1)


# ------------------------------------------------------------------------------------------- training
def _train_options(opts: LearnOptions, seed: int) -> Any:
    from .train import TrainOptions

    base = {"preset": "voltage", "voltage": None, "test_fraction": 0.0, "threads": 1}
    kw = {**base, **opts.train, "seed": seed}
    if kw.get("hidden") is not None:
        kw["hidden"] = tuple(kw["hidden"])
    return TrainOptions(**kw)


def _train_member(data: list[str], run: str, train_opts: Any) -> str:
    """One committee member as a Dask task (resumed from its last epoch); returns its checkpoint."""
    from .train import train

    return str(train(data, run, train_opts, resume=True, log=lambda s: None))


def train_committee(opts: LearnOptions, folder: Path, data: list[str], target: Path, echo: Echo) -> dict:
    """Train ``members`` members on ``data`` in ``folder/m{i}`` (resumed from their last epoch; a finished
    member is kept) and export them as one committee to ``target`` with a calibrated spread threshold.
    Returns {"validation_mse": mean over members (paper metric, F_norm = 1.494), "threshold": the calibrated
    one}."""
    from .checkpoint import read_checkpoint
    from .export import export_checkpoint
    from .train import train

    cks = [folder / f"m{i}" / "model.pt" for i in range(opts.members)]
    missing = [i for i, ck in enumerate(cks) if not ck.exists()]
    if opts.train_workers > 1 and len(missing) > 1:  # members side by side, one process (and thread) each
        from neqforce.client.sweep_cluster import dask_client

        echo(f"  training members {', '.join(str(i + 1) for i in missing)} of {opts.members} in {folder} "
             f"({min(opts.train_workers, len(missing))} at a time)")
        with dask_client(None, n_workers=min(opts.train_workers, len(missing)), echo=echo,
                         processes=True) as client:
            tag = uuid.uuid4().hex[:8]
            futures = [client.submit(_train_member, data, str(folder / f"m{i}"), _train_options(opts, i),
                                     key=f"neqforce-train-{tag}-{i}", pure=False) for i in missing]
            try:
                for fut in futures:
                    fut.result()
            finally:
                for fut in futures:
                    fut.cancel()
    for i in missing:
        if not cks[i].exists():
            echo(f"  training member {i + 1}/{opts.members} in {cks[i].parent}")
            train(data, cks[i].parent, _train_options(opts, i), resume=True, log=lambda s: None)
            safe_point()
    # fixed normalization F_norm = 1.494 (comparable between iterations whose data differ); checkpoints of
    # older packages only have the data-dependent one
    metrics = [read_checkpoint(c)["metrics"] for c in cks]
    val = [float(m["validation_mse_fnorm"] if "validation_mse_fnorm" in m else m["validation_mse"])
           for m in metrics]
    if not target.exists():
        export_checkpoint([str(c) for c in cks], target, calibrate=data, spread_target=opts.spread_target)
    com = json.loads(_load_model(target).metadata.get("neqforce.committee", "{}"))
    return {"validation_mse": float(np.mean(val)), "validation_mse_members": val,
            "threshold": com.get("spread_threshold")}


# ------------------------------------------------------------------------------------------ exploring
def explore(opts: LearnOptions, model: Path, folder: Path, echo: Echo) -> list[Candidate]:
    """ML-BD at every target point with ``model`` (the sweep engine, explicit ONNX backend) into
    ``folder``; returns every explored frame with the committee's largest per-site spread on it."""
    from neqforce.client.sweep import SweepOptions, run_path, run_sweep
    require_learn_preset(opts.train.get("preset", "voltage"))
    from neqforce.client.sweep_grid import grid_points, parse_grid

    sweep = SweepOptions(out=folder, grid=dict(opts.grid), seeds=opts.seeds, steps=opts.steps, dt=opts.dt,
                         save_every=opts.save_every, checkpoint_every=max(opts.save_every, 50),
                         backend="onnx", model=str(model), scheduler=opts.scheduler, workers=opts.workers,
                         plots=False, progress=opts.progress)
    run_sweep(sweep, echo=echo)
    committee = _load_model(model)
    cands = []
    root = opts.out
    for p in grid_points(parse_grid(opts.grid)):
        for seed in range(opts.seeds):
            path = run_path(folder, p, seed)
            fr = read_trajectory(path).frames()
            spreads = frame_spreads(committee, fr["q"], p.params)
            rel = str(path.relative_to(root))
            cands += [Candidate(p.name, p.params, rel, int(s), float(x), q)
                      for s, x, q in zip(fr["step"], spreads, fr["q"], strict=True)]
    return cands


# ------------------------------------------------------------------------------------------- labelling
def _chunks(chosen: list[Candidate], size: int) -> list[tuple[str, list[Candidate]]]:
    """(file stem suffix, frames) per labelling task: a point's frames in chunks of ``size``."""
    out = []
    for point in dict.fromkeys(c.point for c in chosen):
        mine = [c for c in chosen if c.point == point]
        out += [(f"{point}_c{j // size}", mine[j:j + size]) for j in range(0, len(mine), size)]
    return out


def label(opts: LearnOptions, k: int, chosen: list[Candidate], model: Any, threshold: float,
          echo: Echo) -> float:
    """Exact NEGF labels of ``chosen`` (Dask tasks, one per chunk; chunks whose file exists are skipped),
    each chunk written to ``labelled/it{k}_{point}_c{j}.h5`` when its task returns. Returns the NEGF CPU
    seconds of every file of this iteration (those of an earlier, interrupted run included)."""
    folder = opts.out / "labelled"
    jobs = [(folder / f"it{k:03d}_{name}.h5", frames) for name, frames in _chunks(chosen, opts.label_chunk)]
    return label_jobs(jobs, opts.dt, {"iteration": k, "threshold": threshold,
                                      "selected_by": {"model": model.name, "sha256": model.sha256}},
                      scheduler=opts.scheduler, workers=opts.workers, echo=echo)


# --------------------------------------------------------------------------------------------- the loop
def _max_spread_per_point(cands: list[Candidate]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in cands:
        out[c.point] = max(out.get(c.point, 0.0), c.spread)
    return out


def _line(rec: dict[str, Any]) -> str:
    spreads = ", ".join(f"{p} {s:.3g}" for p, s in rec["max_spread"].items())
    val = rec.get("validation_mse")
    return (f"iteration {rec['iteration']}: explored {rec['frames_explored']} frames, labelled "
            f"{rec['frames_labelled']} (NEGF {rec['negf_core_hours']:.3g} core-h), validation MSE "
            f"{'-' if val is None else f'{val:.3g}'}; max spread per point (threshold "
            f"{rec['threshold']:.3g}): {spreads}" + ("; converged" if rec["converged"] else ""))


def run_learn(opts: LearnOptions, echo: Echo = print) -> LearnReport:
    """Run (or resume) the loop of ``opts`` (module docstring); returns what every iteration did. One loop
    writes a folder at a time (:class:`neqforce.runlock.FolderLock`: a second one is refused, one line)."""
    _check(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    opts.out = out
    with FolderLock(out, "--out"):
        return _run_learn(opts, out, echo)


def _run_learn(opts: LearnOptions, out: Path, echo: Echo) -> LearnReport:
    state = _load_state(out, opts)
    _write_state(out, state)
    data = [str(d) for d in opts.data]
    first = model_path(out, 0)
    if not first.exists():
        if opts.model:
            from neqforce.atomic import atomic_write_bytes

            atomic_write_bytes(first, Path(opts.model).read_bytes())
        else:
            echo(f"iteration 0: training the first committee ({opts.members} members) on {', '.join(data)}")
            train_committee(opts, out / "init" / "train", data, first, echo)
    recs = state["iterations"]
    for rec in recs:
        echo(_line(rec) + " [done before]")
    k = len(recs)
    while not (recs and _final(recs[-1])) and k < opts.max_iterations:
        rec = iteration(opts, k, data, echo)
        recs.append(rec)
        _write_state(out, state)
        echo(_line(rec))
        k += 1
    converged = bool(recs) and recs[-1]["converged"]
    final = out / "models" / (recs[-1].get("next_model") or recs[-1]["model"]) if recs else first
    if converged:
        echo(f"converged: the spread of {final.name} is below its threshold at every target point")
    elif recs and _final(recs[-1]):
        echo("stopped: every frame above the threshold is labelled already (raise --steps/--seeds, or "
             "--top-k)")
    else:
        echo(f"stopped after {k} iteration(s) (--max-iterations; rerun with a larger one to continue)")
    echo(f"committee: {final}")
    return LearnReport(out=out, iterations=recs, converged=converged, model=final)


def _final(rec: dict[str, Any]) -> bool:
    """Whether the loop ends after this iteration: converged, or nothing new to label (no next model)."""
    return bool(rec["converged"] or not rec.get("next_model"))


def iteration(opts: LearnOptions, k: int, data: list[str], echo: Echo) -> dict[str, Any]:
    """One explore–select–label–train–export iteration (each step skipped when already done)."""
    out = opts.out
    wall0 = time.monotonic()
    folder = out / f"it{k:03d}"
    current = model_path(out, k)
    model = _load_model(current)
    threshold = opts.threshold if opts.threshold is not None else model.spread_threshold
    if threshold is None:
        raise ValueError(f"{current} has no calibrated spread threshold: pass --threshold")
    echo(f"iteration {k}: exploring with {current.name} (spread threshold {threshold:.4g})")
    cands = explore(opts, current, folder / "explore", echo)
    safe_point()
    walls = {"explore": round(time.monotonic() - wall0, 2)}
    max_spread = _max_spread_per_point(cands)
    sel_path = folder / "selection.json"
    if sel_path.exists():  # in the saved order: the labelling chunks (and their files) are the same again
        by_key = {(c.run, c.step): c for c in cands}
        chosen = [by_key[s["run"], s["step"]] for s in json.loads(sel_path.read_text())["frames"]]
    else:
        chosen = select_frames(cands, threshold, opts.max_per_point, opts.top_k, max_spread=opts.max_spread,
                               pick=opts.pick,
                               exclude=labelled_digests(out / "labelled"))
        atomic_write_text(sel_path, json.dumps({"iteration": k, "threshold": threshold, "model": current.name,
                                                "frames": [{"point": c.point, "run": c.run, "step": c.step,
                                                            "spread": c.spread} for c in chosen]}, indent=1))
    converged = max(max_spread.values(), default=0.0) <= threshold
    rec: dict[str, Any] = {"iteration": k, "model": current.name, "sha256": model.sha256,
                           "threshold": threshold, "frames_explored": len(cands), "frames_labelled": 0,
                           "negf_core_hours": 0.0,
                           "max_spread": max_spread, "validation_mse": None, "converged": converged}
    if converged or not chosen:
        rec["wall_s"] = {**walls, "total": round(time.monotonic() - wall0, 2)}
        return rec
    t0 = time.monotonic()
    cpu_s = label(opts, k, chosen, model, threshold, echo)
    safe_point()
    walls["label"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    trained = train_committee(opts, folder / "train", data + [str(out / "labelled")], model_path(out, k + 1),
                              echo)
    walls["train_export"] = round(time.monotonic() - t0, 2)
    walls["total"] = round(time.monotonic() - wall0, 2)
    rec.update(frames_labelled=len(chosen), negf_core_hours=cpu_s / 3600.0, negf_cpu_s=round(cpu_s, 3),
               validation_mse=trained["validation_mse"], next_model=model_path(out, k + 1).name,
               next_threshold=trained["threshold"], wall_s=walls)
    return rec
