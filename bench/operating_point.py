"""Operating-point study: CDW melting from NEGF-BD trajectories (docs/operating_point.md).

    python bench/operating_point.py data/bundled --out docs/figures

Reads every trajectory of a dataset folder (read-only; partial runs are fine and are marked),
prints the numbers of SPEC §8 and writes the figures:

* ``xi_t.png``: ξ(t) of every run (raw per-step ξ, SPEC §5; the paper's Fig. 4),
* ``density_snapshots.png``: n_i maps of one V = DEFAULT_V run at several times (the paper's Fig. 3),
* ``order_kymograph.png``: column order mean_y |m|(x, t) / q0_bulk for one run per voltage.

Definitions (t in units of 1/gamma, dt = 0.1; "columns" = ξ·lx, the number of metallic columns):

* relaxed CDW: frame 0 of the runs. q0 (bulk) = mean over columns 10..lx-11 of the staggered
  column mean (-1)^(x+y) Q; edge amplitude = the same for column 0 and lx-1; δ = n_A - n_B =
  mean (-1)^(x+y) 2 (n_i - 1/2) over the same bulk columns, from the V = 0 NEGF density of frame 0.
All run numbers come from :mod:`neqforce.physics.domain_wall` (the one implementation shared with
``neqforce sweep`` and ``bench/compare_dynamics.py``):

* nucleation time t_nuc: :func:`nucleation_time`, the earliest t after which ξ > 0 at every later step.
* wall speed v: :func:`fit_wall_speed`, slope of a least-squares line through ξ·lx versus t over the
  propagation window, here from the first step with ξ·lx ≥ 3 to the first step with ξ·lx ≥ lx - 6
  (away from both electrodes), i.e. the ξ window (3/lx, (lx-6)/lx), at least 11 samples.
* t_25: :func:`time_to_xi` at ξ = 25/lx (the wall has reached column 25); reported in steps too.
* melting time of column x: the earliest t after which mean_y |m| of that column stays below q0_bulk/2.
* n metal: mean n_i over the metallic columns (x >= 1) of the last frame.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neqforce.physics import DEFAULT_V, electron_density, local_order, staggered_sign  # noqa: E402
from neqforce.physics.domain_wall import fit_wall_speed, nucleation_time, time_to_xi  # noqa: E402
from neqforce.training.dataset import load_dataset  # noqa: E402
from neqforce.trajectory import Trajectory  # noqa: E402

#: Propagation window of the wall-speed fit: from this many metallic columns to lx minus PROP_END_GAP.
PROP_START = 3
PROP_END_GAP = 6
TARGET_COLUMN = 25


@dataclass
class RunSummary:
    """Numbers of one trajectory (times in units of 1/gamma; nan where not reached)."""

    name: str
    voltage: float
    seed: int
    last_step: int
    complete: bool
    t_nuc: float
    speed: float
    speed_err: float
    window_closed: bool  # False: the wall never reached lx - PROP_END_GAP, fit up to the last step
    t_target: float
    final_columns: float
    n_metal: float  # mean n_i over the metallic columns (x >= 1) of the last frame (nan if none)
    melt_time: np.ndarray  # (lx,)


def persistent_onset(times: np.ndarray, flag: np.ndarray) -> float:
    """Earliest time after which ``flag`` holds at every later sample (nan if it fails at the end)."""
    if flag.size == 0 or not flag[-1]:
        return math.nan
    bad = np.flatnonzero(~flag)
    return float(times[0] if bad.size == 0 else times[bad[-1] + 1])


def wall_speed(times: np.ndarray, columns: np.ndarray, lx: int) -> tuple[float, float, bool]:
    """(slope, standard error, window closed) of columns(t) over the propagation window
    (:func:`fit_wall_speed` with the ξ window (PROP_START/lx, (lx - PROP_END_GAP)/lx))."""
    fit = fit_wall_speed(times, columns / lx, lx, window=(PROP_START / lx, (lx - PROP_END_GAP) / lx),
                         min_points=11)
    return fit.speed, fit.stderr, fit.closed


def summarise(traj: Trajectory) -> RunSummary:
    p = traj.params
    times, xi = traj.xi_series()
    columns = np.rint(xi * p.lx)
    frames = traj.frames()
    order = np.abs(local_order(frames["q"])).mean(axis=-1)  # (frames, lx)
    melted = order < 0.5 * traj.q0_bulk
    melt_time = np.array([persistent_onset(frames["time"], melted[:, x]) for x in range(p.lx)])
    speed, speed_err, closed = wall_speed(times, columns, p.lx)
    metal_cols = np.flatnonzero(melted[-1])
    metal_cols = metal_cols[metal_cols >= 1]
    n_metal = float(frames["density"][-1][metal_cols].mean()) if metal_cols.size else math.nan
    return RunSummary(
        name=Path(traj.extra.get("file", f"V{p.voltage:.3f}_s{traj.seed}")).stem, voltage=p.voltage,
        seed=traj.seed, last_step=traj.last_step, complete=traj.complete,
        t_nuc=nucleation_time(times, xi, p.lx), speed=speed, speed_err=speed_err, window_closed=closed,
        t_target=time_to_xi(times, xi, TARGET_COLUMN / p.lx, p.lx),
        final_columns=float(columns[-1]), n_metal=n_metal, melt_time=melt_time)


def relaxed_cdw_numbers(traj: Trajectory) -> dict[str, float]:
    """q0 (bulk), edge amplitudes and δ of the relaxed V = 0 CDW (frame 0 of a run)."""
    p = traj.params
    q = traj.frames()["q"][0]
    sign = staggered_sign(p.lx, p.ly)
    column_q = (sign * q).mean(axis=1)
    n0 = electron_density(q, p.replace(voltage=0.0))
    column_delta = (2 * sign * (n0 - 0.5)).mean(axis=1)
    bulk = slice(10, p.lx - 10)
    return {"q0_bulk": float(column_q[bulk].mean()), "q0_bulk_spread": float(np.ptp(column_q[bulk])),
            "edge_left": float(column_q[0]), "edge_right": float(column_q[-1]),
            "next_to_edge": float(column_q[1]), "delta_bulk": float(column_delta[bulk].mean()),
            "delta_edge": float(column_delta[0]), "q0_bulk_criterion": traj.q0_bulk,
            "m_edge": float(np.abs(local_order(q)).mean(axis=1)[0])}


def _label(s: RunSummary) -> str:
    return f"V = {s.voltage:g}, seed {s.seed}" + ("" if s.complete else f" (to step {s.last_step})")


def plot_xi(trajs: list[Trajectory], summaries: list[RunSummary], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=150)
    voltages = sorted({s.voltage for s in summaries}, reverse=True)
    markers = dict(zip(voltages, "^sov<>Dp", strict=False))
    colors = plt.get_cmap("tab10").colors
    for k, (traj, s) in enumerate(zip(trajs, summaries, strict=True)):
        t, xi = traj.xi_series()
        every = max(1, len(t) // 60)
        color = colors[k % len(colors)]
        ax.plot(t, xi, "-", lw=0.6, color=color, alpha=0.6)
        ax.plot(t[::every], xi[::every], markers[s.voltage], ms=3.2, color=color, label=_label(s))
    ax.set_xlabel(r"time $t$ (units of $1/\gamma$)")
    ax.set_ylabel(r"domain-wall position $\xi$ (metallic fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"NEGF-BD quench from the relaxed CDW, {trajs[0].params.lx}x{trajs[0].params.ly}, "
                 f"T = {trajs[0].params.temperature:g} (raw per-step $\\xi$)", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "xi_t.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_snapshots(traj: Trajectory, out: Path, n_panels: int = 8, n_cols: int = 4) -> Path:
    fr = traj.frames()
    idx = np.unique(np.linspace(0, len(fr["step"]) - 1, n_panels).round().astype(int))
    n_rows = math.ceil(len(idx) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols + 0.9, 2.75 * n_rows + 0.4), dpi=150,
                             sharex=True, sharey=True, constrained_layout=True, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(idx):
            ax.set_visible(False)
            continue
        i = idx[k]
        im = ax.imshow(fr["density"][i].T, origin="lower", cmap="RdBu_r", vmin=0.0, vmax=1.0,
                       interpolation="nearest", aspect="equal")
        ax.set_title(f"t = {fr['time'][i]:g} (step {fr['step'][i]})", fontsize=8)
        ax.tick_params(labelsize=7)
        if k // n_cols == n_rows - 1:
            ax.set_xlabel("x (transport)", fontsize=8)
        if k % n_cols == 0:
            ax.set_ylabel("y", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label=r"$n_i$")
    fig.suptitle(f"electron density $n_i$, NEGF-BD, V = {traj.params.voltage:g}, seed {traj.seed} "
                 r"(left electrode at x = 0 with $\mu_L = -V$, right electrode at x = lx-1)", fontsize=9)
    path = out / "density_snapshots.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_kymograph(trajs: list[Trajectory], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(trajs), figsize=(3.2 * len(trajs) + 0.8, 3.2), dpi=150,
                             sharey=True, constrained_layout=True)
    for ax, traj in zip(np.atleast_1d(axes), trajs, strict=True):
        fr = traj.frames()
        order = np.abs(local_order(fr["q"])).mean(axis=-1) / traj.q0_bulk
        im = ax.imshow(order, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.05,
                       extent=(-0.5, traj.params.lx - 0.5, fr["time"][0], fr["time"][-1]),
                       interpolation="nearest")
        ax.contour(np.arange(traj.params.lx), fr["time"], order, levels=[0.5], colors="w", linewidths=0.7)
        ax.set_title(f"V = {traj.params.voltage:g}, seed {traj.seed}", fontsize=8)
        ax.set_xlabel("column x", fontsize=8)
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[0].set_ylabel(r"time $t$", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.85, label=r"mean$_y |m| / q_0$ (white: 1/2, metal below)")
    path = out / "order_kymograph.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x: float, spec: str = ".1f") -> str:
    return "—" if not np.isfinite(x) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description="Operating-point study from an NEGF-BD dataset.")
    ap.add_argument("dataset", type=Path, help="dataset folder (e.g. data/bundled)")
    ap.add_argument("--out", type=Path, default=Path("docs/figures"), help="folder for the PNG figures")
    ap.add_argument("--snapshot-seed", type=int, default=0,
                    help="seed of the V = DEFAULT_V run shown in the snapshots")
    args = ap.parse_args()

    trajs = sorted(load_dataset(args.dataset), key=lambda t: (-t.params.voltage, t.seed))
    trajs = [t for t in trajs if t.last_step >= 0]
    if not trajs:
        raise SystemExit(f"error: no trajectories with data in {args.dataset}")
    summaries = [summarise(t) for t in trajs]
    p, dt = trajs[0].params, trajs[0].dt

    print(f"dataset {args.dataset}: {len(trajs)} runs, {p.lx}x{p.ly}, dt = {dt}, T = {p.temperature}, "
          f"gamma_bath = {p.gamma_bath}")
    cdw = relaxed_cdw_numbers(trajs[0])
    print("\nrelaxed V = 0 CDW (frame 0):")
    print(f"  bulk staggered amplitude q0 = {cdw['q0_bulk']:.4f} (spread over columns 10..{p.lx - 11}: "
          f"{cdw['q0_bulk_spread']:.1e}; infinite-lattice q0_bulk = {cdw['q0_bulk_criterion']:.4f})")
    print(f"  edge columns: (-1)^(x+y) Q = {cdw['edge_left']:.4f} (x = 0), {cdw['edge_right']:.4f} "
          f"(x = {p.lx - 1}), {cdw['next_to_edge']:.4f} (x = 1); mean_y |m| at x = 0: {cdw['m_edge']:.4f}")
    print(f"  density modulation delta = n_A - n_B = {cdw['delta_bulk']:.4f} (bulk), "
          f"{cdw['delta_edge']:.4f} (edge column, V = 0)")

    print(f"\nper run (t in 1/gamma; steps = t/dt; speed = d(xi*lx)/dt over {PROP_START} <= xi*lx <= "
          f"{p.lx - PROP_END_GAP}):")
    header = (f"{'run':<14}{'steps':>7}{'t_nuc':>8}{'speed [col/t]':>17}{'t_25':>8}{'step_25':>9}"
              f"{'final xi*lx':>13}{'n metal':>9}{'last 3 columns melt at t':>27}")
    print(header)
    for s in summaries:
        last3 = ", ".join(_fmt(v) for v in s.melt_time[-3:])
        print(f"{s.name:<14}{s.last_step:>6}{'' if s.complete else '*':1}{_fmt(s.t_nuc):>8}"
              f"{_fmt(s.speed, '.3f'):>9}{'' if s.window_closed else '°':1}± {_fmt(s.speed_err, '.3f'):<5}"
              f"{_fmt(s.t_target):>8}{_fmt(s.t_target / dt, '.0f'):>9}"
              f"{_fmt(s.final_columns, '.0f'):>13}{_fmt(s.n_metal, '.3f'):>9}{last3:>27}")
    if any(not s.complete for s in summaries):
        print("  * run not complete yet (partial file)")
    if any(not s.window_closed for s in summaries):
        print(f"  ° wall never reached {p.lx - PROP_END_GAP} columns: speed fitted up to the last step")

    for v in sorted({s.voltage for s in summaries}, reverse=True):
        group = [s for s in summaries if s.voltage == v]
        speeds = np.array([s.speed for s in group if np.isfinite(s.speed)])
        t25 = np.array([s.t_target for s in group if np.isfinite(s.t_target)])
        tn = np.array([s.t_nuc for s in group if np.isfinite(s.t_nuc)])
        line = f"V = {v:g}: {len(group)} run(s)"
        if tn.size:
            line += f"; t_nuc {tn.mean():.1f} (range {tn.min():.1f}-{tn.max():.1f})"
        if speeds.size:
            sd = speeds.std(ddof=1) if speeds.size > 1 else math.nan
            line += f"; wall speed {speeds.mean():.3f} ± {_fmt(sd, '.3f')} col/t (seed spread)"
        if t25.size:
            line += (f"; column {TARGET_COLUMN} reached at step {t25.mean() / dt:.0f} "
                     f"(range {t25.min() / dt:.0f}-{t25.max() / dt:.0f}, {t25.size}/{len(group)} runs)")
        else:
            line += f"; column {TARGET_COLUMN} not reached; final metallic columns " + ", ".join(
                f"{s.final_columns:.0f}" for s in group)
        print(line)

    print("\ncolumn melting times t (persistent mean_y|m| < q0/2; '—' = still ordered at the end):")
    for s in summaries:
        print(f"  {s.name:<14}" + " ".join(f"{_fmt(v, '.1f'):>5}" for v in s.melt_time))

    args.out.mkdir(parents=True, exist_ok=True)
    paths = [plot_xi(trajs, summaries, args.out)]
    main_runs = [t for t in trajs if math.isclose(t.params.voltage, DEFAULT_V)]
    snap = next((t for t in main_runs if t.seed == args.snapshot_seed),
                main_runs[0] if main_runs else trajs[0])
    paths.append(plot_snapshots(snap, args.out))
    voltages = sorted({t.params.voltage for t in trajs})
    kymo = [next(t for t in trajs if t.params.voltage == v) for v in voltages]
    paths.append(plot_kymograph(kymo, args.out))
    print("\nfigures: " + ", ".join(str(x) for x in paths))


if __name__ == "__main__":
    main()
