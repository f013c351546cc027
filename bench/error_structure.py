"""Where a force model's error sits in a dynamics frame: per voltage, the share of the squared error
(paper metric, fixed F_norm) carried by metallic and CDW columns at a given distance from the nearest
domain wall, and by CDW columns of given order |m|/q0 (SPEC §5 criterion), on the validation blocks
(25-step blocks, one in five: what early stopping holds out) of NEGF-BD trajectories.

    python bench/error_structure.py neqforce/models/voltage.onnx data/vrange data/vhigh
    python bench/error_structure.py MODEL DATA... --split all     # every frame (training frames included)

A column is metallic when its mean |m| is below q0_bulk / 2 (``metallic_columns``); a wall sits between
two neighbouring columns of different kind. Only the model's force output is used (``neqforce evaluate``'s
loader, one thread: an ONNX file or a training checkpoint).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from neqforce.physics.domain_wall import bulk_cdw_amplitude, local_order, metallic_columns
from neqforce.training.data import validation_mask
from neqforce.training.dataset import load_dataset
from neqforce.training.evaluate import LoadedModel, load_any

F_NORM = 1.494  # the fixed normalization of the paper's metric (voltage.json "metric_normalization")
WALL_BINS = ((0.0, 2.6, "≤ 2"), (2.6, 5.0, "3–4"), (5.0, np.inf, "≥ 5"))
ORDER_BINS = ((0.5, 0.7), (0.7, 0.85), (0.85, 1.0), (1.0, np.inf))


def column_table(model: LoadedModel, data: list[Path], split: str) -> dict[float, np.ndarray]:
    """Per voltage, rows (squared error, signed error, metallic, wall distance, |m|/q0) per column."""
    rows: dict[float, list[np.ndarray]] = defaultdict(list)
    for traj in load_dataset(data):
        fr = traj.frames()
        keep = validation_mask(fr["step"]) if split == "validation" else np.ones(len(fr["step"]), bool)
        if not keep.any():
            continue
        q, force = fr["q"][keep], fr["force"][keep]
        err = (model.predict(q, np.full(len(q), traj.params.voltage)) - force) / F_NORM
        q0 = bulk_cdw_amplitude(traj.params)
        metal = metallic_columns(q, q0)  # (n, lx)
        order = np.abs(local_order(q)).mean(axis=2) / q0
        x = np.arange(q.shape[1]) + 0.0
        walls = metal[:, 1:] != metal[:, :-1]  # wall between x and x + 1
        dist = np.full(metal.shape, np.inf)
        for k in range(len(q)):
            at = np.flatnonzero(walls[k]) + 0.5
            if at.size:
                dist[k] = np.min(np.abs(x[:, None] - at[None, :]), axis=1)
        rows[traj.params.voltage].append(np.stack(
            [(err ** 2).mean(axis=2), err.mean(axis=2), metal, dist, order], -1).reshape(-1, 5))
    return {v: np.concatenate(r) for v, r in sorted(rows.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--split", choices=("validation", "all"), default="validation")
    args = ap.parse_args(argv)
    try:
        tables = column_table(load_any(args.model, threads=1), args.data, args.split)
    except ValueError as exc:  # a missing model or dataset, a model without neqforce metadata
        raise SystemExit(f"error: {exc}") from None
    if not tables:
        raise SystemExit("error: no frames in the requested split")
    print(f"{args.model.name} on {args.split} frames, F_norm {F_NORM}; per class: share of the squared "
          "error / share of the columns / MSE")
    for v, r in tables.items():
        total = r[:, 0].sum()
        print(f"V = {v:g}: {len(r)} columns, MSE {r[:, 0].mean():.2e}")
        for kind, is_metal in (("CDW", 0.0), ("metal", 1.0)):
            for lo, hi, label in WALL_BINS:
                sel = (r[:, 2] == is_metal) & (r[:, 3] >= lo) & (r[:, 3] < hi)
                if sel.any():
                    print(f"  {kind:5s} columns {label} from a wall: {r[sel, 0].sum() / total:5.2f} / "
                          f"{sel.mean():5.2f} / {r[sel, 0].mean():.2e}")
            sel = (r[:, 2] == is_metal) & np.isinf(r[:, 3])
            if sel.any():
                print(f"  {kind:5s} columns, frame without a wall: {r[sel, 0].sum() / total:5.2f} / "
                      f"{sel.mean():5.2f} / {r[sel, 0].mean():.2e}")
        cdw = (r[:, 2] == 0.0) & np.isfinite(r[:, 3])
        for lo, hi in ORDER_BINS:
            sel = cdw & (r[:, 4] >= lo) & (r[:, 4] < hi)
            if sel.any():
                print(f"  CDW columns (a wall in the frame) with |m|/q0 in [{lo}, {hi}): MSE "
                      f"{r[sel, 0].mean():.2e}, mean signed error {r[sel, 1].mean():+.4f} "
                      f"({sel.sum()} columns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
