"""ML-BD vs NEGF-BD over voltage, held-out seeds only: does the voltage-range model reproduce the dynamics?

    python bench/voltage_dynamics.py data/heldout --model neqforce/models/voltage.onnx --out runs/vdyn

The NEGF side is every NEGF-BD trajectory of the given dataset folders (the frozen blind test set
``datasets/heldout``: 30×28, seed 1000 at V = 2.25 … 4.0, never used in training). The ML side is one
``neqforce sweep`` over the same voltages and lattice on the model (explicit ONNX backend, every site's
force from the model, nothing replayed), seeds ``--first-seed`` … (default 1000–1007: seed 1000 shares
its noise with the NEGF run — its "twin" — and 1001–1007 are independent; no seed of any training
trajectory). Both sides go through the same library metrics (:func:`neqforce.physics.run_metrics`:
nucleation time, wall speed over the ξ window, times to ξ = 0.5 and 0.9). Prints one table per quantity:
NEGF value, ML twin, ML ensemble mean ± standard error, and the ratio ML mean / NEGF. Last, the threshold
voltage of each side: where the fraction of runs that switched (ξ reached 0.5) crosses 1/2, interpolated
between voltages — the definition of ``neqforce sweep`` (:func:`neqforce.client.sweep_summary.threshold`).

A folder may also be a ``neqforce sweep --backend negf`` output (its ``runs/*/seed*/trajectory.h5``), so
NEGF-BD runs at extra voltages join the dataset runs, e.g. a finer grid near the threshold:

    neqforce sweep --voltage 2.8125,2.875,2.9375 --seeds 3 --first-seed 1002 --steps 400 --backend negf \
        --out runs/thr_negf
    python bench/voltage_dynamics.py data/heldout3 data/heldout4 data/heldout5 runs/thr_negf \
        --model neqforce/models/voltage.onnx --first-seed 1002 --seeds 16 --out runs/vdyn_thr
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from neqforce.physics.domain_wall import run_metrics
from neqforce.trajectory import read_trajectory

QUANTITIES = ("t_nuc", "speed", "t_xi50", "t_xi90", "final_xi")


def _exe() -> str:
    beside = Path(sys.executable).with_name("neqforce")
    return str(beside) if beside.exists() else "neqforce"


def metrics_of(path: Path) -> tuple[float, int, dict[str, float]]:
    """(voltage, seed, metrics) of one trajectory file."""
    t = read_trajectory(path)
    time, xi = t.xi_series()
    m = run_metrics(time, xi, t.params.lx)
    return t.params.voltage, t.seed, {q: float(getattr(m, q)) for q in QUANTITIES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("negf", nargs="+", type=Path,
                    help="folders of NEGF-BD trajectories (datasets: V*.h5; sweeps: "
                         "runs/*/seed*/trajectory.h5)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/vdyn"))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    negf: dict[float, list[tuple[int, dict]]] = {}
    lattice, steps = None, 0
    for folder in args.negf:
        for f in sorted(folder.glob("*.h5")) + sorted(folder.glob("runs/*/seed*/trajectory.h5")):
            t = read_trajectory(f)
            if not t.complete or t.backend != "negf":
                continue
            lattice = lattice or (t.params.lx, t.params.ly)
            steps = max(steps, t.last_step)
            v, seed, m = metrics_of(f)
            negf.setdefault(round(v, 6), []).append((seed, m))
    if not negf:
        raise SystemExit("error: no complete NEGF-BD trajectory in the given folders")
    volts = sorted(negf)
    cmd = [_exe(), "sweep", "--voltage", ",".join(f"{v:g}" for v in volts), "--lx", str(lattice[0]),
           "--ly", str(lattice[1]), "--seeds", str(args.seeds), "--first-seed", str(args.first_seed),
           "--steps", str(steps), "--backend", "onnx", "--model", str(args.model), "--no-plots",
           "--no-progress", "--workers", str(args.workers), "--out", str(args.out)]
    print("# " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: the sweep failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    ml: dict[float, list[tuple[int, dict]]] = {}
    for f in sorted((args.out / "runs").glob("*/seed*/trajectory.h5")):
        v, seed, m = metrics_of(f)
        ml.setdefault(round(v, 6), []).append((seed, m))
    summary = {}
    for q in QUANTITIES:
        print(f"\n{q}: NEGF (seeds) | ML twin (seed {args.first_seed}) | ML mean ± s.e. (n) | ML / NEGF")
        for v in volts:
            nv = [m[q] for _, m in negf[v]]
            mv = np.array([m[q] for _, m in ml.get(v, [])], dtype=float)
            twin = next((m[q] for s, m in ml.get(v, []) if s == args.first_seed), math.nan)
            fin = mv[np.isfinite(mv)]
            mean = float(fin.mean()) if fin.size else math.nan
            sem = float(fin.std(ddof=1) / math.sqrt(fin.size)) if fin.size > 1 else math.nan
            ref = float(np.nanmean(nv)) if np.isfinite(nv).any() else math.nan
            ratio = mean / ref if np.isfinite(ref) and ref != 0 else math.nan
            print(f"  V = {v:<5g} {', '.join(f'{x:.3f}' for x in nv):>14} | {twin:8.3f} | {mean:7.3f} ± "
                  f"{sem:.3f} ({fin.size}/{mv.size}) | {ratio:.3f}")
            summary.setdefault(str(v), {})[q] = {"negf": nv, "ml_twin": twin, "ml_mean": mean, "ml_sem": sem,
                                                 "ml_n": int(fin.size), "ratio": ratio}
    summary["threshold"] = thresholds(volts, negf, ml)
    (args.out / "voltage_dynamics.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(f"\nwrote {args.out / 'voltage_dynamics.json'}")


def thresholds(volts: list[float], negf: dict, ml: dict) -> dict:
    """Switched fraction per voltage and the threshold voltage of each side (printed)."""
    from neqforce.client.sweep_summary import threshold

    print("\nswitched (ξ reached 0.5): NEGF | ML")
    out: dict = {}
    for side, runs in (("negf", negf), ("ml", ml)):
        fractions = [float(np.mean([np.isfinite(m["t_xi50"]) for _, m in runs.get(v, [])])) for v in volts]
        value, text = threshold(volts, fractions)
        out[side] = {"fractions": fractions, "threshold": value, "text": text}
    for i, v in enumerate(volts):
        fn, fm = out["negf"]["fractions"][i], out["ml"]["fractions"][i]
        print(f"  V = {v:<7g} {fn:.3f} ({len(negf[v])}) | {fm:.3f} ({len(ml.get(v, []))})")
    diff = out["ml"]["threshold"] - out["negf"]["threshold"]
    print(f"threshold voltage: NEGF {out['negf']['text']}, ML {out['ml']['text']}, ML − NEGF {diff:+.3f}")
    return out


if __name__ == "__main__":
    main()
