"""Exact NEGF-BD against the model from one and the same state: does the model's dynamics hold at a
point where no full NEGF-BD twin is affordable?

A full NEGF-BD twin of a long-device run costs hours (60×28: ~11 s per step on 2 cores, > 2 000 steps to
the end of the run). A continuation costs only as many steps as the question needs: take a state of the
model's run (say, where its wall stalls), integrate it on with exact NEGF and with the model alone (same
seed: the same noise), and compare ξ(t); the exact run's frames also measure the model's force error on
states the exact dynamics visits. Example (docs/ml_model.md, "60×28: does the wall stall?"):

    neqforce simulate --lx 60 --ly 28 -V 3.0 --steps 2000 --seed 1004 --out runs/stall60/ml60 --no-plots
    neqforce simulate --lx 60 --ly 28 -V 3.0 --init runs/stall60/ml60/trajectory.h5 --frame 150 \
        --backend negf --steps 400 --seed 2001 --out runs/stall60/negf_from1500 --no-plots
    neqforce simulate --lx 60 --ly 28 -V 3.0 --init runs/stall60/ml60/trajectory.h5 --frame 150 \
        --backend onnx --steps 400 --seed 2001 --out runs/stall60/ml_from1500 --no-plots
    python bench/continuation.py runs/stall60/negf_from1500 runs/stall60/ml_from1500

Prints ξ and the number of metallic columns every ``--every`` steps side by side (up to the steps both runs
have: a partial NEGF run can be read while it goes on), then the model's errors on the NEGF run's frames in
the paper's metric with the fixed normalization F_norm (default 1.494, the bundled card's): over the lattice,
within ±6 columns of the wall (the first CDW column of the domain connected to the left electrode), in the
metal behind it and in the CDW ahead of it; and the committee spread on those frames against the model's
threshold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neqforce.models import bundled_model_path
from neqforce.physics.domain_wall import metallic_columns
from neqforce.server.backends.onnx import OnnxModel
from neqforce.trajectory import read_trajectory

#: Columns either side of the wall counted as "near the wall".
NEAR_WALL = 6


def _trajectory(path: Path):  # noqa: ANN202 - a neqforce.trajectory.Trajectory
    return read_trajectory(path / "trajectory.h5" if path.is_dir() else path)


def wall_column(metal: np.ndarray) -> int:
    """Index of the first non-metallic column (lx when every column is metallic): the wall of the metallic
    domain connected to the left electrode."""
    cdw = np.flatnonzero(~metal)
    return int(cdw[0]) if cdw.size else len(metal)


def region_errors(pred: np.ndarray, ref: np.ndarray, metal: np.ndarray, f_norm: float) -> dict[str, float]:
    """MSE of (F_ref - F_pred) / f_norm over frames (S, lx, ly): all sites, near the wall, the metal behind
    it, the CDW ahead of it (regions per frame, from its metallic columns)."""
    d2 = ((ref - pred) / f_norm) ** 2
    lx = ref.shape[1]
    sums = {"all": [0.0, 0], "near wall": [0.0, 0], "metal behind": [0.0, 0], "CDW ahead": [0.0, 0]}
    for i in range(len(ref)):
        w = wall_column(metal[i])
        cols = np.arange(lx)
        masks = {"all": np.ones(lx, bool), "near wall": np.abs(cols - w) < NEAR_WALL,
                 "metal behind": cols <= w - NEAR_WALL, "CDW ahead": cols >= w + NEAR_WALL}
        for name, m in masks.items():
            sums[name][0] += float(d2[i, m].sum())
            sums[name][1] += int(m.sum()) * ref.shape[2]
    return {name: s / n if n else float("nan") for name, (s, n) in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("negf", type=Path, help="the exact NEGF-BD continuation (folder or trajectory.h5)")
    ap.add_argument("model_run", type=Path, help="the model's continuation from the same state, same seed")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model to score (default: the bundled one)")
    ap.add_argument("--f-norm", type=float, default=1.494, help="fixed normalization of the force metric")
    ap.add_argument("--every", type=int, default=50, help="print ξ every this many steps")
    ap.add_argument("--frames", action="store_true", help="also print every exact frame's errors and spread")
    args = ap.parse_args(argv)

    exact, ml = _trajectory(args.negf), _trajectory(args.model_run)
    if exact.params != ml.params:
        raise SystemExit("error: the two runs have different parameters")
    p = exact.params
    print(f"{p.lx}×{p.ly}, V = {p.voltage}; exact: seed {exact.seed}, backend {exact.backend}; "
          f"model run: seed {ml.seed}, backend {ml.backend} ({ml.model})")
    xs = dict(zip(exact.series_step, exact.series_xi, strict=True))
    xm = dict(zip(ml.series_step, ml.series_xi, strict=True))
    common = sorted(set(xs) & set(xm))
    if not common:
        raise SystemExit("error: the runs share no step (not continuations of one state?)")
    print(f"{'step':>6s} {'ξ exact':>8s} {'ξ model':>8s}   (metallic columns = ξ · lx)")
    for s in common[::max(1, args.every)] + ([common[-1]] if (len(common) - 1) % args.every else []):
        print(f"{s:6d} {xs[s]:8.3f} {xm[s]:8.3f}   ({round(xs[s] * p.lx):d} / {round(xm[s] * p.lx):d})")
    tail = common[-min(100, len(common)):]
    print(f"mean ξ over the last {len(tail)} common steps: exact {np.mean([xs[s] for s in tail]):.3f}, "
          f"model {np.mean([xm[s] for s in tail]):.3f}; largest ξ: exact {max(xs[s] for s in common):.3f}, "
          f"model {max(xm[s] for s in common):.3f}")

    spreads = np.asarray(ml.series_force_std_max, dtype=np.float64)
    model = OnnxModel.load(str(args.model or bundled_model_path()), "model", threads=2)
    threshold = model.spread_threshold
    if threshold is not None and spreads.size:
        print(f"model run: {int(np.sum(spreads > threshold))} of {spreads.size} steps above the spread "
              f"threshold {threshold:.4f} (largest {np.nanmax(spreads):.3f})")

    frames = exact.frames()
    q, force = np.asarray(frames["q"]), np.asarray(frames["force"])
    pred, _, std = model.evaluate(q, want_density=True, params=p.physical())
    pred = np.asarray(pred, dtype=np.float64)
    metal = metallic_columns(q, exact.q0_bulk)
    err = region_errors(pred, force, metal, args.f_norm)
    steps = frames["step"]
    print(f"model on the exact run's {len(q)} frames (steps {int(steps[0])}–{int(steps[-1])}; "
          f"metallic columns {int(metal.sum(axis=1).min())}–{int(metal.sum(axis=1).max())}), MSE with "
          f"F_norm = {args.f_norm}: " + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
    if std is not None:
        per_frame = np.asarray(std, dtype=np.float64).reshape(len(q), -1).max(axis=1)
        above = "" if threshold is None else f", {int(np.sum(per_frame > threshold))} above the threshold"
        print(f"committee spread on those frames: largest per frame {per_frame.min():.3f}–"
              f"{per_frame.max():.3f}{above}")
        if args.frames:
            print(f"{'step':>6s} {'metal':>6s} {'MSE all':>9s} {'MSE wall':>9s} {'spread':>7s}")
            for i in range(len(q)):
                e = region_errors(pred[i:i + 1], force[i:i + 1], metal[i:i + 1], args.f_norm)
                flag = " flagged" if threshold is not None and per_frame[i] > threshold else ""
                print(f"{int(steps[i]):6d} {int(metal[i].sum()):6d} {e['all']:9.2e} {e['near wall']:9.2e} "
                      f"{per_frame[i]:7.3f}{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
