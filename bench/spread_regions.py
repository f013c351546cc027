"""Where the committee spread ranks the error and where it does not: per-site Spearman by region.

    python bench/spread_regions.py neqforce/models/voltage.onnx data/remnant60_blind data/remnant60_blind2
    python bench/spread_regions.py neqforce/models/voltage.onnx data/heldout5 --stride 10

Issue 10 asks for a per-site Spearman correlation ≥ 0.5 between the committee spread (``force_std``) and
the actual error |F_NEGF − F_model| on held-out frames. This splits the sites of the given frames by their
column's distance to the nearest metallic/CDW boundary (metallic columns: mean_y |m| < q0/2, SPEC §5) and
by the column's CDW order |mean_y (−1)^(x+y) Q| / q0, and prints for each class and each voltage the share of
sites, the Spearman correlation within it, the mean |error| and mean spread (force units) and their ratio.
"Deep metal" is a column with order < 0.25 at least 10 columns from any boundary. A ratio that is the same in
every class means no class-wise rescaling of the spread can raise the overall Spearman: only a spread that
tracks the error *within* the weak classes can.

``--other M`` asks whether a differently built opinion would help: with a second model M's forces, the
combined spread σ' = √(σ² + c·|F − F_M|²/3) (M as a fourth committee member of weight c) is ranked against
the error for each ``--c``:

    python bench/spread_regions.py neqforce/models/voltage.onnx data/remnant60_blind data/remnant60_blind2 \
        --other old.onnx --c 0.25,1,4      # old.onnx: e.g. `git show 1a5fac1:neqforce/models/voltage.onnx`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from neqforce.physics import metallic_columns
from neqforce.training.evaluate import load_any
from neqforce.trajectory import read_trajectory

WALL_BINS = ((0, 2), (2, 5), (5, 10), (10, 10_000))
ORDER_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 10.0))


def site_table(model_path: Path, folders: list[Path], stride: int, threads: int,
               other: Path | None = None) -> dict[str, np.ndarray]:
    """Per site of every frame: spread, |error|, column order / q0, distance to the nearest boundary, V
    (and with ``other``, |F − F_other|)."""
    model = load_any(model_path, threads=threads)
    second = load_any(other, threads=threads) if other is not None else None
    if model.spread is None:
        raise SystemExit(f"error: {model_path} has no force_std output (not a committee)")
    keys = ("spread", "error", "order", "wall", "voltage", "other")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for folder in folders:
        files = sorted(folder.glob("*.h5"))
        if not files:
            raise SystemExit(f"error: no trajectory files in {folder}")
        for f in files:
            t = read_trajectory(f)
            fr = t.frames()
            q, force = fr["q"][::stride], fr["force"][::stride]
            v = np.full(len(q), t.params.voltage)
            pred = model.predict(q, v)
            err = np.abs(pred - force)
            if second is not None:
                cols["other"].append(np.abs(pred - second.predict(q, v)).reshape(len(q), -1))
            spread = model.spread(q, v)
            lx, ly = t.params.lx, t.params.ly
            x = np.arange(lx)
            stagger = (-1.0) ** (x[:, None] + np.arange(ly)[None, :])
            order = np.abs((q * stagger).mean(axis=2)) / t.q0_bulk  # (n, lx)
            metal = metallic_columns(q, t.q0_bulk)  # (n, lx) bool
            edge = np.diff(metal.astype(np.int8), axis=1) != 0  # boundary between x and x+1
            wall = np.full(metal.shape, float(lx))
            for i, b in zip(*np.nonzero(edge), strict=True):  # few boundaries per frame
                wall[i] = np.minimum(wall[i], np.abs(x - b - 0.5))
            cols["spread"].append(spread.reshape(len(q), -1))
            cols["error"].append(err.reshape(len(q), -1))
            cols["order"].append(np.repeat(order, ly, axis=1))
            cols["wall"].append(np.repeat(wall, ly, axis=1))
            cols["voltage"].append(np.repeat(v[:, None], lx * ly, axis=1))
    return {k: np.concatenate([a.ravel() for a in c]) for k, c in cols.items() if c}


def row(label: str, s: np.ndarray, e: np.ndarray, share: float) -> str:
    rho = spearmanr(s, e)[0] if s.size > 2 else float("nan")
    return (f"  {label:<24} {share:6.1%}  Spearman {rho:6.3f}   mean |error| {e.mean():.4f}   "
            f"mean spread {s.mean():.4f}   ratio {e.mean() / s.mean():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="committee .onnx (with a force_std output)")
    ap.add_argument("data", nargs="+", type=Path, help="folders of trajectory files with exact NEGF forces")
    ap.add_argument("--stride", type=int, default=1, help="use every stride-th frame of each file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--other", type=Path, default=None, help="second model (disagreement as spread)")
    ap.add_argument("--c", default="0.25,1,4", help="weights c of --other's disagreement")
    args = ap.parse_args()
    d = site_table(args.model, args.data, max(args.stride, 1), args.threads, args.other)
    s, e, n = d["spread"], d["error"], d["spread"].size
    deep = (d["wall"] >= 10) & (d["order"] < 0.25)
    print(f"{n} sites; overall Spearman {spearmanr(s, e)[0]:.3f}")
    print("by distance to the nearest metallic/CDW boundary (columns):")
    for lo, hi in WALL_BINS:
        k = (d["wall"] >= lo) & (d["wall"] < hi)
        if k.any():
            print(row(f"[{lo}, {hi if hi < 10_000 else 'inf'})", s[k], e[k], k.mean()))
    print("by column order |m| / q0:")
    for lo, hi in ORDER_BINS:
        k = (d["order"] >= lo) & (d["order"] < hi)
        if k.any():
            print(row(f"[{lo}, {hi if hi < 10 else 'inf'})", s[k], e[k], k.mean()))
    print("deep metal (order < 0.25, >= 10 columns from a boundary) and the rest, per voltage:")
    for v in np.unique(d["voltage"]):
        kv = d["voltage"] == v
        print(row(f"V = {v:g}, all", s[kv], e[kv], kv.mean()))
        for label, k in (("deep metal", kv & deep), ("rest", kv & ~deep)):
            if k.sum() > 2:
                print(row(f"V = {v:g}, {label}", s[k], e[k], k.sum() / kv.sum()))
    if "other" in d:
        print(f"with {args.other} as a fourth opinion, sqrt(spread^2 + c |F - F_other|^2 / 3):")
        print(f"  |F - F_other| alone: Spearman {spearmanr(d['other'], e)[0]:.3f}")
        for c in (float(x) for x in args.c.split(",")):
            combined = np.sqrt(s**2 + c * d["other"] ** 2 / 3)
            print(f"  c = {c:g}: Spearman {spearmanr(combined, e)[0]:.3f} "
                  f"(deep metal {spearmanr(combined[deep], e[deep])[0]:.3f})")


if __name__ == "__main__":
    main()
