"""ML-BD vs NEGF-BD: does the surrogate reproduce the domain-wall dynamics? (issue 4; paper Figs. 3, 4)

Both ensembles start from the same relaxed V = 0 CDW on the same lattice and are driven over the whole
device by one backend each: the NEGF runs are the exact NEGF-BD trajectories of a dataset folder
(``neqforce dataset generate``), the ML runs are integrated here with the ONNX model alone (no replay of
NEGF data anywhere, every site's force comes from the model). Same seeds → same noise sequence.

    python bench/compare_dynamics.py data/bundled --out docs/figures --seeds 0,1,2,3,4,5 \
        --large 300x280 --large-steps 600

Prints a table (nucleation time, wall speed, time to column 25, wall time per run, mean ± std and
standard error) and writes ``dynamics_xi.png`` (Fig. 4 analog), ``dynamics_snapshots.png`` (Fig. 3
analog), ``dynamics_large.png`` and ``dynamics_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from neqforce.models import bundled_model_path  # noqa: E402
from neqforce.physics import (  # noqa: E402
    HolsteinParams,
    brownian_dynamics,
    bulk_cdw_amplitude,
    cdw_ground_state,
    domain_wall_position,
    nucleation_time,
    wall_speed,
)
from neqforce.physics.domain_wall import time_to_xi  # noqa: E402
from neqforce.trajectory import read_trajectory  # noqa: E402


def onnx_force_fn(model: Path, threads: int):
    """Q (lx, ly) -> (F, n) from an ONNX model obeying the SPEC §9 contract."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])

    def force_fn(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, n = sess.run(["force", "density"], {"q": q[None].astype(np.float32)})
        return f[0].astype(np.float64), n[0].astype(np.float64)

    return force_fn


def run_ml(params: HolsteinParams, q0: np.ndarray, force_fn, n_steps: int, seed: int, dt: float,
           keep_every: int) -> dict:
    """One ML-BD run: ξ at every step, (Q, n) snapshots every ``keep_every`` steps, wall time."""
    q0_bulk = bulk_cdw_amplitude(params)
    xi, snaps = [], {}
    start = time.perf_counter()
    for s in brownian_dynamics(q0, force_fn, n_steps=n_steps, dt=dt, temperature=params.temperature,
                               seed=seed):
        xi.append(domain_wall_position(s.q, params, q0_bulk))
        if s.step % keep_every == 0:
            snaps[s.step] = s.density
    wall = time.perf_counter() - start
    return {"time": np.arange(n_steps + 1) * dt, "xi": np.asarray(xi), "density": snaps, "wall_s": wall}


def negf_wall_time(traj) -> float:
    """Wall-clock seconds of a dataset run: recorded ``wall_time_s``, else file mtime − ``created``
    (runs made before the writer recorded it; includes any waiting on a shared machine)."""
    if "wall_time_s" in traj.extra:
        return float(traj.extra["wall_time_s"])
    import datetime as dt

    created = dt.datetime.fromisoformat(traj.created).timestamp()
    return float(Path(traj.extra["file"]).stat().st_mtime - created) if "file" in traj.extra else float("nan")


def time_to_column(t: np.ndarray, xi: np.ndarray, lx: int, column: int = 25) -> float:
    """First time at which at least ``column`` columns are metallic (nan if never): the library's
    :func:`neqforce.physics.domain_wall.time_to_xi` at ξ = column / lx."""
    return time_to_xi(t, xi, column / lx, lx)


def stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    ok = v[np.isfinite(v)]
    n = ok.size
    return {"mean": float(ok.mean()) if n else float("nan"),
            "std": float(ok.std(ddof=1)) if n > 1 else float("nan"),
            "sem": float(ok.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "n": int(n), "values": [float(x) for x in v]}


def summarize(runs: list[dict], lx: int) -> dict:
    return {
        "nucleation_time": stats([nucleation_time(r["time"], r["xi"], lx) for r in runs]),
        "wall_speed": stats([wall_speed(r["time"], r["xi"], lx) for r in runs]),
        "time_to_col25": stats([time_to_column(r["time"], r["xi"], lx) for r in runs]),
        "wall_time_s": stats([r["wall_s"] for r in runs]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="folder with NEGF-BD trajectories (V*.h5)")
    ap.add_argument("--model", type=Path, default=bundled_model_path())
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--voltage", type=float, default=3.0)
    ap.add_argument("--seeds", default="", help="NEGF seeds to use (default: all at --voltage)")
    ap.add_argument("--ml-seeds", default="", help="ML seeds (default: the NEGF seeds)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--large", default="300x280", help="lattice of the large ML-only run ('' to skip)")
    ap.add_argument("--large-steps", type=int, default=600)
    args = ap.parse_args(argv)

    files = sorted(args.dataset.glob(f"V{args.voltage:.3f}_s*.h5"))
    negf = []
    for f in files:
        traj = read_trajectory(f)
        traj.extra = {**traj.extra, "file": str(f)}
        negf.append(traj)
    negf = [t for t in negf if t.complete]
    if args.seeds:
        wanted = {int(s) for s in args.seeds.split(",")}
        negf = [t for t in negf if t.seed in wanted]
    if not negf:
        print(f"error: no complete NEGF trajectories at V={args.voltage} in {args.dataset}", file=sys.stderr)
        return 2
    params = negf[0].params
    lx = params.lx
    n_steps = min(t.checkpoint_step for t in negf)
    dt = negf[0].dt
    negf_runs = []
    for t in negf:
        tt, xi = t.xi_series()
        fr = t.frames()
        dens = {int(s): d for s, d in zip(fr["step"], fr["density"], strict=True)}
        negf_runs.append({"time": tt[: n_steps + 1], "xi": xi[: n_steps + 1], "density": dens,
                          "wall_s": negf_wall_time(t), "seed": t.seed})
    ml_seeds = [int(s) for s in args.ml_seeds.split(",")] if args.ml_seeds else [t.seed for t in negf]

    force_fn = onnx_force_fn(args.model, args.threads)
    q0 = cdw_ground_state(params)
    ml_runs = []
    for seed in ml_seeds:
        r = run_ml(params, q0, force_fn, n_steps, seed, dt, keep_every=50)
        r["seed"] = seed
        ml_runs.append(r)
        print(f"ML-BD seed {seed}: {r['wall_s']:.2f} s for {n_steps} steps", flush=True)

    summary = {"params": params.to_dict(), "n_steps": n_steps, "dt": dt, "model": str(args.model),
               "negf": summarize(negf_runs, lx), "ml": summarize(ml_runs, lx),
               "negf_seeds": [r["seed"] for r in negf_runs], "ml_seeds": ml_seeds}
    t = negf_runs[0]["time"]
    xn = np.stack([r["xi"] for r in negf_runs])
    xm = np.stack([r["xi"] for r in ml_runs])
    mean_n, std_n, mean_m = xn.mean(0), xn.std(0, ddof=1) if len(xn) > 1 else 0 * xn[0], xm.mean(0)
    inside = np.abs(mean_m - mean_n) <= np.maximum(std_n, 1.0 / lx)
    summary["ml_mean_inside_negf_spread_fraction"] = float(inside.mean())
    summary["max_abs_mean_xi_difference"] = float(np.abs(mean_m - mean_n).max())

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between(t, mean_n - std_n, mean_n + std_n, color="C0", alpha=0.25, label="NEGF-BD ± 1σ")
    ax.plot(t, mean_n, color="C0", lw=2, label=f"NEGF-BD mean ({len(xn)} seeds)")
    std_m = xm.std(0, ddof=1) if len(xm) > 1 else 0 * mean_m
    ax.fill_between(t, mean_m - std_m, mean_m + std_m, color="C3", alpha=0.2, label="ML-BD ± 1σ")
    ax.plot(t, mean_m, color="C3", lw=2, ls="--", label=f"ML-BD mean ({len(xm)} seeds)")
    ax.set_xlabel(r"time $t$ [$1/\gamma$]")
    ax.set_ylabel(r"metallic fraction $\xi(t)$ (raw)")
    ax.set_title(f"{params.lx}×{params.ly}, V = {params.voltage:g}, T = {params.temperature:g}")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "dynamics_xi.png", dpi=150)
    plt.close(fig)

    steps = [s for s in (0, 100, 200, 300, 400, 500, 600) if s <= n_steps]
    fig, axes = plt.subplots(2, len(steps), figsize=(2.0 * len(steps), 4.6), squeeze=False)
    for row, (label, run) in enumerate((("NEGF-BD", negf_runs[0]), ("ML-BD", ml_runs[0]))):
        for col, s in enumerate(steps):
            ax = axes[row][col]
            im = ax.imshow(run["density"][s].T, origin="lower", cmap="RdBu_r", vmin=0, vmax=1,
                           aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {s * dt:g}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{label}\nseed {run['seed']}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label=r"$n_i$")
    fig.suptitle("density snapshots (left electrode at the left edge)", fontsize=10)
    fig.savefig(args.out / "dynamics_snapshots.png", dpi=150)
    plt.close(fig)

    if args.large:
        lx_l, ly_l = (int(v) for v in args.large.lower().split("x"))
        big = params.replace(lx=lx_l, ly=ly_l)
        # relaxed CDW of the large device: the bulk amplitude with the 30×28 edge profile in x
        q_small = q0
        prof = np.abs(q_small[:, : 1]).ravel()
        half = lx // 2
        amp = np.full(lx_l, prof[half])
        amp[:half] = prof[:half]
        amp[-half:] = prof[-half:]
        from neqforce.physics import staggered_sign

        q_big = staggered_sign(lx_l, ly_l) * amp[:, None]
        start = time.perf_counter()
        r = run_ml(big, q_big, force_fn, args.large_steps, 0, dt, keep_every=args.large_steps // 2)
        summary["large"] = {"lx": lx_l, "ly": ly_l, "steps": args.large_steps, "wall_s": r["wall_s"],
                            "sites_steps_per_s": lx_l * ly_l * (args.large_steps + 1) / r["wall_s"],
                            "xi_final": float(r["xi"][-1]),
                            "wall_speed": wall_speed(r["time"], r["xi"], lx_l),
                            "nucleation_time": nucleation_time(r["time"], r["xi"], lx_l)}
        del start
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot(r["time"], r["xi"] * lx_l, color="C3")
        a1.set_xlabel(r"time $t$ [$1/\gamma$]")
        a1.set_ylabel("metallic columns ξ·lx")
        a1.set_title(f"ML-BD {lx_l}×{ly_l}")
        last = max(r["density"])
        im = a2.imshow(r["density"][last].T, origin="lower", cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
        a2.set_title(f"n_i at t = {last * dt:g}")
        a2.set_xlabel("x (left electrode at x = 0)")
        a2.set_ylabel("y")
        fig.colorbar(im, ax=a2, label=r"$n_i$")
        fig.tight_layout()
        fig.savefig(args.out / "dynamics_large.png", dpi=130)
        plt.close(fig)

    (args.out / "dynamics_summary.json").write_text(json.dumps(summary, indent=2))
    rows = [("nucleation time [1/γ]", "nucleation_time"), ("wall speed [columns/(1/γ)]", "wall_speed"),
            ("time to column 25 [1/γ]", "time_to_col25"), ("wall time per run [s]", "wall_time_s")]
    head = ("quantity", "NEGF-BD mean ± std (sem)", "ML-BD mean ± std (sem)", "ML/NEGF")
    print(f"\n{head[0]:30s} {head[1]:>30s} {head[2]:>30s} {head[3]:>8s}")
    for label, key in rows:
        a, b = summary["negf"][key], summary["ml"][key]
        print(f"{label:30s} {a['mean']:12.3f} ± {a['std']:6.3f} ({a['sem']:5.3f})"
              f" {b['mean']:12.3f} ± {b['std']:6.3f} ({b['sem']:5.3f}) {b['mean'] / a['mean']:8.3f}")
    print(f"ML mean ξ(t) inside the NEGF ±1σ band (or within one column): "
          f"{100 * summary['ml_mean_inside_negf_spread_fraction']:.1f}% of times; "
          f"max |Δ mean ξ| = {summary['max_abs_mean_xi_difference']:.3f}")
    if "large" in summary:
        L = summary["large"]
        print(f"large ML-BD {L['lx']}×{L['ly']}: {L['steps']} steps in {L['wall_s']:.1f} s "
              f"({L['sites_steps_per_s']:.3g} site-steps/s), final ξ = {L['xi_final']:.3f}, "
              f"wall speed {L['wall_speed']:.3f} col/(1/γ)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
