"""Evaluation of a force model (ONNX file or training checkpoint) against NEGF trajectories.

Prints the paper's metrics (forces rescaled to [-1, 1] by max |F| of the evaluated set: MSE and the
standard deviation σ of the error), overall and per region (bulk, near the left electrode x < 6,
near the right electrode lx-1-x < 6), and writes the paper's Fig. 2 as PNG: a parity plot and a
histogram of δ = F_NEGF - F_ML. An ONNX model is run with ONNX Runtime (no torch needed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import (
    REGIONS,
    Frames,
    frame_groups,
    qualify_ids,
    region_of_column,
    select_voltage,
    training_validation_mask,
    traj_id,
    validation_mask,
)
from .dataset import load_dataset
from .metrics import force_metrics, format_metrics

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """A model ready to predict total forces for frames q (S, lx, ly) at voltages (S,), with what it was
    trained on; ``spread`` (committee models only) predicts the per-site force_std."""

    predict: Predictor
    params: dict
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    spread: Predictor | None = None
    takes_voltage: bool = False


def onnx_session(path: str | os.PathLike[str], threads: int = 0):
    """An ONNX Runtime CPU session (``threads`` intra-op threads; 0: ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_any(path: str | os.PathLike[str], threads: int = 0, chunk: int = 64) -> LoadedModel:
    """Load an ``.onnx`` model (ONNX Runtime) or a training checkpoint (torch)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model not found: {path}")
    if path.suffix == ".onnx":
        from .export import onnx_feeds

        sess = onnx_session(path, threads)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        if "neqforce.params" not in meta:
            raise ValueError(f"{path} has no neqforce.params metadata (not a neqforce model)")
        training = json.loads(meta.get("neqforce.training", "{}"))

        def runner(output: str) -> Predictor:
            def run(q: np.ndarray, v: np.ndarray) -> np.ndarray:
                q = np.asarray(q, dtype=np.float32)
                out = [sess.run([output], onnx_feeds(sess, q[i:i + chunk], v[i:i + chunk]))[0]
                       for i in range(0, len(q), chunk)]
                return np.concatenate(out).astype(np.float64)
            return run

        has_std = "force_std" in {o.name for o in sess.get_outputs()}
        return LoadedModel(runner("force"), json.loads(meta["neqforce.params"]),
                           training.get("train_ids") or [], training.get("test_ids") or [], meta,
                           runner("force_std") if has_std else None,
                           "voltage" in {i.name for i in sess.get_inputs()})
    import torch

    from .checkpoint import load_model
    from .train import predict_forces

    if threads:
        torch.set_num_threads(threads)
    model, ck = load_model(path)
    return LoadedModel(lambda q, v: predict_forces(model, q, v, chunk), ck["params"], ck.get("train_ids", []),
                       ck.get("test_ids", []), {"metrics": ck.get("metrics", {})},
                       takes_voltage=model.config.takes_voltage)


def spread_report(items: Sequence[tuple[np.ndarray, np.ndarray, Frames]], threshold: float | None) -> dict:
    """How well the committee spread predicts the error, for ``(pred, spread, frames)`` items: Spearman
    correlation of the per-site spread with the per-site |error|, and of each frame's largest spread
    with its error RMSE; with a threshold, the share of frames above it and their error RMSE."""
    from .calibration import spearman

    site_s, site_e, frame_s, frame_e = [], [], [], []
    for pred, spread, fr in items:
        err = np.abs(np.asarray(pred, np.float64) - fr.force)
        site_s.append(spread.ravel())
        site_e.append(err.ravel())
        frame_s.append(spread.reshape(len(fr), -1).max(axis=1))
        frame_e.append(np.sqrt((err.reshape(len(fr), -1) ** 2).mean(axis=1)))
    fs, fe = np.concatenate(frame_s), np.concatenate(frame_e)
    out = {"spearman_sites": spearman(np.concatenate(site_s), np.concatenate(site_e)),
           "spearman_frames": spearman(fs, fe), "spread_max": float(fs.max()), "spread_threshold": threshold}
    if threshold is not None:
        above = fs > threshold
        out["frames_above_threshold"] = int(above.sum())
        out["rmse_force_above"] = float(np.sqrt(np.mean(fe[above] ** 2))) if above.any() else None
        out["rmse_force_below"] = float(np.sqrt(np.mean(fe[~above] ** 2))) if (~above).any() else None
    return out


def evaluate(model_path: str | os.PathLike[str], data: str | os.PathLike[str] | Sequence[str],
             out: str | os.PathLike[str] | None = None, split: str = "auto", voltage: float | None = None,
             stride: int = 1, threads: int = 0, log: Callable[[str], None] = print,
             f_max: float | None = None) -> dict:
    """Metrics of a model on trajectories of ``data``; writes metrics.json and the two PNGs to ``out``.

    split: ``test`` (the model's held-out trajectories), ``train``, ``all``, ``validation`` (the
    early-stopping blocks of every trajectory, :func:`validation_mask`: how to compare models on data
    none of them trained on, without touching a test set), ``validation-all`` (every frame training holds
    out, :func:`training_validation_mask`: the blocks and every fifth frame of a lattice group without
    blocks, e.g. labelled long-device frames; give the data in training's order), or ``auto`` (test
    when the data holds the model's test trajectories, else all). A q-only model is evaluated at its voltage
    (or ``voltage``); a model with a voltage input on every voltage of the data (or ``voltage``), each
    frame at its own V, over every lattice shape. ``f_max``: fixed normalization of the paper's metric
    (default: max |F_NEGF| of the evaluated frames). A committee model also gets :func:`spread_report`
    (``metrics['spread']``).
    """
    lm = load_any(model_path, threads)
    v = voltage if voltage is not None or lm.takes_voltage else lm.params.get("voltage")
    trajs = qualify_ids(select_voltage(load_dataset(data), v))
    phys = trajs[0].params.physical()
    if any(abs(phys[k] - lm.params.get(k, phys[k])) > 1e-9 for k in phys if k != "voltage"):
        log("warning: the data's physical parameters differ from the model's (transfer test)")
    ids = {traj_id(t): t for t in trajs}
    if split == "auto":
        split = "test" if any(i in ids for i in lm.test_ids) else "all"
    if split == "test":
        chosen = [ids[i] for i in lm.test_ids if i in ids]
    elif split == "train":
        chosen = [ids[i] for i in lm.train_ids if i in ids]
    elif split in ("all", "validation", "validation-all"):
        chosen = list(trajs)
    else:
        raise ValueError(f"unknown split {split!r} (auto, test, train, all, validation, validation-all)")
    if not chosen:
        raise ValueError(f"no trajectory of split {split!r} in the data")
    groups = frame_groups(chosen, stride=stride)
    if split == "validation":
        groups = [fr.subset(validation_mask(fr.step)) for fr in groups]
        groups = [fr for fr in groups if len(fr)]
        if not groups:
            raise ValueError("no frame of the data lies in a validation block")
    elif split == "validation-all":
        groups = [fr.subset(training_validation_mask(fr.step)) for fr in groups]
    preds = [lm.predict(fr.q, fr.voltage) for fr in groups]
    metrics = grouped_metrics(list(zip(preds, groups, strict=True)), f_max)
    metrics["split"], metrics["trajectories"] = split, [i for fr in groups for i in fr.ids]
    log(f"{split} trajectories: {', '.join(metrics['trajectories'])}")
    log(format_metrics(metrics))
    for name, r in metrics.get("by_group", {}).items():
        log(f"  {name:<16} MSE {r['mse']:.3e}  sigma {r['sigma']:.4f}  RMSE(F) {r['rmse_force']:.4f}")
    if lm.spread is not None:
        threshold = json.loads(lm.metadata.get("neqforce.committee", "{}")).get("spread_threshold")
        spreads = [lm.spread(fr.q, fr.voltage) for fr in groups]
        metrics["spread"] = spread_report(list(zip(preds, spreads, groups, strict=True)), threshold)
        sp = metrics["spread"]
        log(f"committee spread vs actual error: Spearman {sp['spearman_sites']:.3f} (sites), "
            f"{sp['spearman_frames']:.3f} (frames: largest spread vs RMSE); largest spread "
            f"{sp['spread_max']:.4g}, threshold {threshold if threshold is not None else 'none'}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        train_pts = None
        if split == "test":
            tr = [ids[i] for i in lm.train_ids if i in ids]
            if tr:
                ftr = frame_groups(tr, stride=max(stride, 4))
                train_pts = (np.concatenate([f.force.ravel() for f in ftr]),
                             np.concatenate([lm.predict(f.q, f.voltage).ravel() for f in ftr]))
        plot_fig2(np.concatenate([fr.force.ravel() for fr in groups]),
                  np.concatenate([p.ravel() for p in preds]), metrics, out, train_pts)
        log(f"wrote {out / 'metrics.json'}, {out / 'parity.png'}, {out / 'error_hist.png'}")
    return metrics


def _stats(d: np.ndarray, f_max: float) -> dict:
    return {"mse": float(np.mean(d**2)), "sigma": float(np.std(d)), "mean": float(np.mean(d)),
            "max_abs": float(np.max(np.abs(d))), "rmse_force": float(np.sqrt(np.mean(d**2)) * f_max),
            "n_sites": int(d.size)}


def grouped_metrics(items: Sequence[tuple[np.ndarray, Frames]], f_max: float | None = None) -> dict:
    """The paper's metrics of predictions ``(pred (S, lx, ly), frames)`` over frames of several lattice
    shapes and voltages, with one F_max (max |F_NEGF| of all of them, or ``f_max``): pooled overall and
    per region as :func:`force_metrics`, plus ``by_group`` {"LXxLY V=v": overall stats}. One item gives
    exactly :func:`force_metrics`."""
    if len(items) == 1 and len(np.unique(items[0][1].voltage)) == 1:
        pred, fr = items[0]
        return force_metrics(pred, fr.force, f_max)
    f_max = float(max(np.abs(fr.force).max() for _, fr in items)) if f_max is None else float(f_max)
    deltas, labels, by_group = [], [], {}
    for pred, fr in items:
        d = (fr.force - np.asarray(pred, np.float64)) / f_max
        lab = np.broadcast_to(region_of_column(fr.params.lx)[None, :, None], d.shape)
        deltas.append(d.ravel())
        labels.append(lab.ravel())
        for v in np.unique(fr.voltage):
            by_group[f"{fr.params.lx}x{fr.params.ly} V={float(v):g}"] = _stats(d[fr.voltage == v], f_max)
    delta, label = np.concatenate(deltas), np.concatenate(labels)
    shapes = sorted({fr.params.shape for _, fr in items})
    out: dict = {"f_max": f_max, "n_frames": int(sum(len(fr) for _, fr in items)),
                 "lattice": ["/".join(str(s[0]) for s in shapes),
                             "/".join(sorted({str(s[1]) for s in shapes}))],
                 "overall": _stats(delta, f_max), "by_group": by_group}
    for i, region in enumerate(REGIONS):
        if np.any(label == i):
            out[region] = _stats(delta[label == i], f_max)
    return out


def plot_fig2(ref: np.ndarray, pred: np.ndarray, metrics: dict, out: Path,
              train: tuple[np.ndarray, np.ndarray] | None = None, max_points: int = 60000) -> None:
    """The paper's Fig. 2: parity plot (forces / F_max) and the normalized error histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f_max = metrics["f_max"]
    rng = np.random.default_rng(0)

    def sample(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = a.ravel() / f_max, b.ravel() / f_max
        idx = rng.choice(a.size, min(a.size, max_points), replace=False)
        return a[idx], b[idx]

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if train is not None:
        x, y = sample(*train)
        ax.scatter(x, y, s=2, alpha=0.4, color="tab:blue", label="train", rasterized=True)
    x, y = sample(ref, pred)
    label = f"test: MSE {metrics['overall']['mse']:.2e}" if metrics["split"] == "test" else metrics["split"]
    ax.scatter(x, y, s=2, alpha=0.4, color="tab:orange", label=label, rasterized=True)
    ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
    ax.set(xlabel="F_NEGF / F_max", ylabel="F_ML / F_max", xlim=(-1.05, 1.05), ylim=(-1.05, 1.05),
           title="ML vs NEGF forces")
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=130)
    plt.close(fig)

    delta = ((ref - pred) / f_max).ravel()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    sigma = metrics["overall"]["sigma"]
    core = delta[np.abs(delta) < 8 * sigma]
    axes[0].hist(core, bins=160, density=True, color="tab:orange")
    axes[1].hist(delta, bins=200, density=True, color="tab:orange", log=True)
    for ax in axes:
        ax.set(xlabel="δ = (F_NEGF - F_ML) / F_max", ylabel="density")
    axes[0].set_title(f"σ = {sigma:.4f}, mean = {metrics['overall']['mean']:.1e} (|δ| < 8σ)")
    axes[1].set_title("all errors, log scale")
    fig.tight_layout()
    fig.savefig(out / "error_hist.png", dpi=130)
    plt.close(fig)
