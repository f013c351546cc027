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

from .data import frames_of, select_voltage, traj_id
from .dataset import load_dataset
from .metrics import force_metrics, format_metrics

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """A model ready to predict total forces for frames (S, lx, ly), with what it was trained on."""

    predict: Predictor
    params: dict
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


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
        sess = onnx_session(path, threads)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        if "neqforce.params" not in meta:
            raise ValueError(f"{path} has no neqforce.params metadata (not a neqforce model)")
        training = json.loads(meta.get("neqforce.training", "{}"))

        def predict(q: np.ndarray) -> np.ndarray:
            q = np.asarray(q, dtype=np.float32)
            out = [sess.run(["force"], {"q": q[i:i + chunk]})[0] for i in range(0, len(q), chunk)]
            return np.concatenate(out).astype(np.float64)

        return LoadedModel(predict, json.loads(meta["neqforce.params"]), training.get("train_ids") or [],
                           training.get("test_ids") or [], meta)
    import torch

    from .checkpoint import load_model
    from .train import predict_forces

    if threads:
        torch.set_num_threads(threads)
    model, ck = load_model(path)
    return LoadedModel(lambda q: predict_forces(model, q, chunk), ck["params"], ck.get("train_ids", []),
                       ck.get("test_ids", []), {"metrics": ck.get("metrics", {})})


def evaluate(model_path: str | os.PathLike[str], data: str | os.PathLike[str] | Sequence[str],
             out: str | os.PathLike[str] | None = None, split: str = "auto", voltage: float | None = None,
             stride: int = 1, threads: int = 0, log: Callable[[str], None] = print) -> dict:
    """Metrics of a model on trajectories of ``data``; writes metrics.json and the two PNGs to ``out``.

    split: ``test`` (the model's held-out trajectories), ``train``, ``all``, or ``auto`` (test when
    the data holds the model's test trajectories, else all). Only trajectories at the model's voltage
    (or ``voltage``) are used.
    """
    lm = load_any(model_path, threads)
    v = lm.params.get("voltage") if voltage is None else voltage
    trajs = select_voltage(load_dataset(data), v)
    phys = trajs[0].params.physical()
    if any(abs(phys[k] - lm.params.get(k, phys[k])) > 1e-9 for k in phys):
        log("warning: the data's physical parameters differ from the model's (transfer test)")
    ids = {traj_id(t): t for t in trajs}
    if split == "auto":
        split = "test" if any(i in ids for i in lm.test_ids) else "all"
    if split == "test":
        chosen = [ids[i] for i in lm.test_ids if i in ids]
    elif split == "train":
        chosen = [ids[i] for i in lm.train_ids if i in ids]
    elif split == "all":
        chosen = list(trajs)
    else:
        raise ValueError(f"unknown split {split!r} (auto, test, train, all)")
    if not chosen:
        raise ValueError(f"no trajectory of split {split!r} in the data")
    fr = frames_of(chosen, stride=stride)
    pred = lm.predict(fr.q)
    metrics = force_metrics(pred, fr.force)
    metrics["split"], metrics["trajectories"] = split, fr.ids
    log(f"{split} trajectories: {', '.join(fr.ids)}")
    log(format_metrics(metrics))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        train_pts = None
        if split == "test":
            tr = [ids[i] for i in lm.train_ids if i in ids]
            if tr:
                ftr = frames_of(tr, stride=max(stride, 4))
                train_pts = (ftr.force, lm.predict(ftr.q))
        plot_fig2(fr.force, pred, metrics, out, train_pts)
        log(f"wrote {out / 'metrics.json'}, {out / 'parity.png'}, {out / 'error_hist.png'}")
    return metrics


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
