"""ML-BD vs NEGF-BD over voltage, held-out seeds only: does the voltage-range model reproduce the dynamics?

    python bench/voltage_dynamics.py data/heldout --model neqforce/models/voltage.onnx --out runs/vdyn

The NEGF side is every NEGF-BD trajectory of the given dataset folders (the frozen blind test set
``datasets/heldout``: 30×28, seed 1000 at V = 2.25 … 4.0, never used in training). The ML side is one
``neqforce sweep`` over the same voltages and lattice on the model (explicit ONNX backend, every site's
force from the model, nothing replayed), seeds ``--first-seed`` … (default 1000–1007: seed 1000 shares
its noise with the NEGF run — its "twin" — and 1001–1007 are independent; no seed of any training
trajectory). Both sides go through the same library metrics (:func:`neqforce.physics.run_metrics`:
nucleation time, wall speed over the ξ window, times to ξ = 0.5 and 0.9). Prints one table per quantity:
NEGF values, their mean ± standard error (n finite), ML twin, ML ensemble mean ± standard error, and the
ratio ML mean / NEGF mean ± its standard error (the two relative errors in quadrature: with a handful of
NEGF seeds that scatter by ±10–15 %, the NEGF side dominates it). Last, the threshold
voltage of each side: where the fraction of runs that switched (ξ reached 0.5) crosses 1/2, interpolated
between voltages — the definition of ``neqforce sweep`` (:func:`neqforce.client.sweep_summary.threshold`).

A folder may also be a ``neqforce sweep --backend negf`` output (its ``runs/*/seed*/trajectory.h5``), so
NEGF-BD runs at extra voltages join the dataset runs, e.g. a finer grid near the threshold:

    neqforce sweep --voltage 2.8125,2.875,2.9375 --seeds 3 --first-seed 1002 --steps 400 --backend negf \
        --out runs/thr_negf
    python bench/voltage_dynamics.py data/heldout3 data/heldout4 data/heldout5 runs/thr_negf \
        --model neqforce/models/voltage.onnx --first-seed 1002 --seeds 16 --out runs/vdyn_thr

NEGF-BD runs cost hours and live on one machine; ``--save-negf-xi FILE.npz`` records the NEGF side's ξ(t)
series (voltage, seed, lattice, dt, ξ of every step: all the metrics need), and such a file is accepted in
place of a folder, so the comparison reruns from a fresh clone against the committed record:

    python bench/voltage_dynamics.py docs/figures/voltage_dynamics_0.7_negf_xi.npz \
        --model neqforce/models/voltage.onnx --first-seed 1004 --seeds 16 --out runs/vdyn07
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from neqforce.atomic import atomic_path
from neqforce.physics.domain_wall import run_metrics
from neqforce.trajectory import read_trajectory, step_times

QUANTITIES = ("t_nuc", "speed", "t_xi50", "t_xi90", "final_xi")


def _exe() -> str:
    beside = Path(sys.executable).with_name("neqforce")
    return str(beside) if beside.exists() else "neqforce"


def metrics_of(path: Path) -> tuple[float, int, dict[str, float]]:
    """(voltage, seed, metrics) of one trajectory file."""
    t = read_trajectory(path)
    time, xi = t.xi_series()
    return t.params.voltage, t.seed, _metrics(time, xi, t.params.lx)


def _metrics(time: np.ndarray, xi: np.ndarray, lx: int) -> dict[str, float]:
    m = run_metrics(time, xi, lx)
    return {q: float(getattr(m, q)) for q in QUANTITIES}


def negf_runs(sources: list[Path]) -> list[dict]:
    """Every complete NEGF-BD run of the sources (dataset or sweep folders, or a ``--save-negf-xi`` record):
    dicts of voltage, seed, lx, ly, dt, steps and the ξ series (one value per step from 0)."""
    runs = []
    for src in sources:
        if src.suffix == ".npz":
            with np.load(src) as z:
                xi, n = z["xi"], z["n_steps"]
                for i in range(len(n)):
                    runs.append({"voltage": float(z["voltage"][i]), "seed": int(z["seed"][i]),
                                 "lx": int(z["lx"][i]), "ly": int(z["ly"][i]), "dt": float(z["dt"][i]),
                                 "steps": int(n[i]), "xi": xi[i, :n[i] + 1].astype(np.float64)})
            continue
        if not src.is_dir():
            raise SystemExit(f"error: {src} is neither a folder of NEGF-BD runs nor a .npz record")
        for f in sorted(src.glob("*.h5")) + sorted(src.glob("runs/*/seed*/trajectory.h5")):
            t = read_trajectory(f)
            if not t.complete or t.backend != "negf":
                continue
            runs.append({"voltage": t.params.voltage, "seed": t.seed, "lx": t.params.lx, "ly": t.params.ly,
                         "dt": t.dt, "steps": t.last_step, "xi": t.xi_series()[1]})
    return runs


def run_metrics_of(run: dict) -> dict[str, float]:
    """The library metrics of one run of :func:`negf_runs` (its times as ``Trajectory.xi_series`` gives)."""
    return _metrics(step_times(np.arange(len(run["xi"])), run["dt"]), run["xi"], run["lx"])


def save_negf_xi(path: Path, runs: list[dict]) -> None:
    """The NEGF side's ξ series as one compressed .npz, written atomically (:func:`negf_runs` reads it)."""
    width = max(r["steps"] for r in runs) + 1
    xi = np.full((len(runs), width), np.nan)
    for i, r in enumerate(runs):
        xi[i, :len(r["xi"])] = r["xi"]
    cols = {k: np.array([r[k] for r in runs]) for k in ("voltage", "seed", "lx", "ly", "dt")}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, xi=xi, n_steps=np.array([r["steps"] for r in runs]), **cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("negf", nargs="+", type=Path,
                    help="folders of NEGF-BD trajectories (datasets: V*.h5; sweeps: "
                         "runs/*/seed*/trajectory.h5) or .npz records of --save-negf-xi")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/vdyn"))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-negf-xi", type=Path, default=None,
                    help="write the NEGF side's ξ series here (.npz): reruns the comparison without the runs")
    args = ap.parse_args()

    runs = negf_runs(args.negf)
    if not runs:
        raise SystemExit("error: no complete NEGF-BD trajectory in the given sources")
    if len({(r["lx"], r["ly"]) for r in runs}) > 1:
        raise SystemExit("error: the NEGF-BD runs are on more than one lattice size; compare one at a time")
    lattice, steps = (runs[0]["lx"], runs[0]["ly"]), max(r["steps"] for r in runs)
    negf: dict[float, list[tuple[int, dict]]] = {}
    for r in runs:
        negf.setdefault(round(r["voltage"], 6), []).append((r["seed"], run_metrics_of(r)))
    if args.save_negf_xi is not None:
        save_negf_xi(args.save_negf_xi, runs)
        print(f"# NEGF side's ξ series: {args.save_negf_xi} ({len(runs)} runs)")
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
        print(f"\n{q}: NEGF (seeds) | NEGF mean ± s.e. (n) | ML twin (seed {args.first_seed}) | "
              f"ML mean ± s.e. (n) | ML / NEGF ± s.e.")
        for v in volts:
            nv = [m[q] for _, m in negf[v]]
            mv = np.array([m[q] for _, m in ml.get(v, [])], dtype=float)
            twin = next((m[q] for s, m in ml.get(v, []) if s == args.first_seed), math.nan)
            fin = mv[np.isfinite(mv)]
            mean = float(fin.mean()) if fin.size else math.nan
            sem = float(fin.std(ddof=1) / math.sqrt(fin.size)) if fin.size > 1 else math.nan
            nf = np.array(nv, dtype=float)
            nf = nf[np.isfinite(nf)]
            ref = float(nf.mean()) if nf.size else math.nan
            ref_sem = float(nf.std(ddof=1) / math.sqrt(nf.size)) if nf.size > 1 else math.nan
            ratio = mean / ref if np.isfinite(ref) and ref != 0 else math.nan
            ratio_sem = abs(ratio) * math.hypot(sem / mean, ref_sem / ref) if ref and mean else math.nan
            print(f"  V = {v:<5g} {', '.join(f'{x:.3f}' for x in nv):>14} | {ref:7.3f} ± {ref_sem:.3f} "
                  f"({nf.size}/{len(nv)}) | {twin:8.3f} | {mean:7.3f} ± {sem:.3f} ({fin.size}/{mv.size}) | "
                  f"{ratio:.3f} ± {ratio_sem:.3f}")
            summary.setdefault(str(v), {})[q] = {"negf": nv, "negf_mean": ref, "negf_sem": ref_sem,
                                                 "negf_n": int(nf.size), "ml_twin": twin, "ml_mean": mean,
                                                 "ml_sem": sem, "ml_n": int(fin.size), "ratio": ratio,
                                                 "ratio_sem": ratio_sem}
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
