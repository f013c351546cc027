"""Summary outputs of a sweep: ``summary.csv``, ``phase_diagram.png``, ``xi_families.png``.

Every number is computed by :func:`neqforce.physics.domain_wall.run_metrics` (times in units of 1/γ):

* ``t_nuc``: nucleation time, the earliest time after which ξ >= 1/lx at every later step;
* ``wall_speed``: columns per unit time, least-squares slope of ξ·lx(t) over the ξ window
  ``speed_window`` (default 0.2–0.8: from the first step with ξ >= 0.2 to the first with ξ >= 0.8);
* ``t_xi50``, ``t_xi90``: first time with ξ >= 0.5 / 0.9; ``final_xi``: ξ at the last step;
* ``nucleated``: t_nuc exists; ``switched``: ξ reached 0.5 (the metallic domain invaded half the device).

Per parameter point: mean ± standard error over the seeds (s.e. = sample std / sqrt(n), over the
runs where the quantity exists; ``n_<quantity>`` says how many), and the fractions of runs that
nucleated and switched. The threshold voltage V_th is where the switched fraction crosses 1/2,
linearly interpolated between neighbouring voltages (or "below"/"above" the swept range).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.atomic import atomic_write_bytes
from neqforce.physics.domain_wall import SPEED_WINDOW, RunMetrics, run_metrics
from neqforce.trajectory import Trajectory

METRICS = ("t_nuc", "wall_speed", "t_xi50", "t_xi90", "final_xi")


@dataclass
class RunSummary:
    """One run: where it sits in the grid, its provenance and its metrics."""

    point: str
    swept: dict[str, float]
    traj: Trajectory
    metrics: RunMetrics

    @property
    def values(self) -> dict[str, float]:
        m = self.metrics
        return {"t_nuc": m.t_nuc, "wall_speed": m.speed, "t_xi50": m.t_xi50, "t_xi90": m.t_xi90,
                "final_xi": m.final_xi}


@dataclass
class PointSummary:
    """Mean ± s.e. over the runs of one parameter point."""

    point: str
    swept: dict[str, float]
    runs: list[RunSummary]
    mean: dict[str, float]
    sem: dict[str, float]
    count: dict[str, int]
    nucleated: float
    switched: float


def summarise_run(point: str, swept: dict[str, float], traj: Trajectory,
                  window: tuple[float, float] = SPEED_WINDOW) -> RunSummary:
    t, xi = traj.xi_series()
    metrics = run_metrics(t, xi, traj.params.lx, window)
    return RunSummary(point=point, swept=dict(swept), traj=traj, metrics=metrics)


def mean_sem(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) over the finite values (nan where there are none / fewer than 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, math.nan, 0
    sem = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), sem, int(v.size)


def summarise_point(point: str, swept: dict[str, float], runs: list[RunSummary]) -> PointSummary:
    mean, sem, count = {}, {}, {}
    for name in METRICS:
        mean[name], sem[name], count[name] = mean_sem([r.values[name] for r in runs])
    n = max(1, len(runs))
    return PointSummary(point=point, swept=dict(swept), runs=runs, mean=mean, sem=sem, count=count,
                        nucleated=sum(r.metrics.nucleated for r in runs) / n,
                        switched=sum(r.metrics.switched for r in runs) / n)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "" if not math.isfinite(x) else repr(x)
    return str(x)


def write_summary_csv(path: str | os.PathLike[str], points: Sequence[PointSummary]) -> Path:
    """One row per run (``kind = run``) and one per point (``kind = point``, mean and ``*_sem``)."""
    from neqforce.physics import HolsteinParams

    names = [f for f in HolsteinParams().to_dict()]
    window = points[0].runs[0].metrics.window if points and points[0].runs else SPEED_WINDOW
    header = (["kind", "point", *names, "seed", "n_runs", "backend", "model", "complete", "steps",
               "speed_window", *METRICS, *(f"{m}_sem" for m in METRICS), *(f"n_{m}" for m in METRICS),
               "wall_speed_fit_err", "nucleated", "switched", "wall_clock_s"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    win = f"{window[0]:g}-{window[1]:g}"
    for p in points:
        for r in p.runs:
            t = r.traj
            row = {"kind": "run", "point": p.point, **t.params.to_dict(), "seed": t.seed, "n_runs": 1,
                   "backend": t.backend, "model": t.model, "complete": int(t.complete),
                   "steps": t.last_step, "speed_window": win, **r.values,
                   "wall_speed_fit_err": r.metrics.speed_err, "nucleated": int(r.metrics.nucleated),
                   "switched": int(r.metrics.switched),
                   "wall_clock_s": float(t.extra.get("wall_time_s", math.nan))}
            w.writerow([_fmt(row.get(h, "")) for h in header])
        if not p.runs:
            continue
        first = p.runs[0].traj
        row = {"kind": "point", "point": p.point, **first.params.to_dict(), "n_runs": len(p.runs),
               "backend": ",".join(sorted({r.traj.backend for r in p.runs})),
               "model": ",".join(sorted({r.traj.model for r in p.runs})),
               "complete": int(all(r.traj.complete for r in p.runs)),
               "steps": min(r.traj.last_step for r in p.runs), "speed_window": win, **p.mean,
               **{f"{m}_sem": p.sem[m] for m in METRICS}, **{f"n_{m}": p.count[m] for m in METRICS},
               "nucleated": p.nucleated, "switched": p.switched,
               "wall_clock_s": mean_sem([float(r.traj.extra.get("wall_time_s", math.nan))
                                         for r in p.runs])[0]}
        w.writerow([_fmt(row.get(h, "")) for h in header])
    return atomic_write_bytes(path, buf.getvalue().encode())


def x_axis(points: Sequence[PointSummary]) -> str:
    """The field on the x axis of the figures: voltage when swept (or nothing is), else the first swept."""
    swept = list(points[0].swept) if points else []
    return "voltage" if "voltage" in swept or not swept else swept[0]


def x_value(point: PointSummary, x: str) -> float:
    """The point's value of the x-axis field (swept, or its base parameter)."""
    if x in point.swept:
        return float(point.swept[x])
    return float(getattr(point.runs[0].traj.params, x)) if point.runs else math.nan


def _families(points: Sequence[PointSummary], x: str) -> dict[tuple, list[PointSummary]]:
    """Points grouped by the swept fields other than ``x`` (one curve each), sorted along x."""
    groups: dict[tuple, list[PointSummary]] = {}
    for p in points:
        key = tuple((k, v) for k, v in p.swept.items() if k != x)
        groups.setdefault(key, []).append(p)
    for key in groups:
        groups[key].sort(key=lambda p: x_value(p, x))
    return groups


def threshold(xs: Sequence[float], fractions: Sequence[float], level: float = 0.5) -> tuple[float, str]:
    """Where ``fractions`` (vs increasing ``xs``) first crosses ``level`` upwards, interpolated;
    (nan, "below x0") when already above at the first point, (nan, "above x_max") when never."""
    xs, fr = np.asarray(xs, dtype=float), np.asarray(fractions, dtype=float)
    if not xs.size:
        return math.nan, "no points"
    if fr[0] >= level:
        return math.nan, f"at or below {xs[0]:g}"
    for i in range(1, len(xs)):
        if fr[i] >= level:
            x = xs[i - 1] + (level - fr[i - 1]) * (xs[i] - xs[i - 1]) / (fr[i] - fr[i - 1])
            return float(x), f"{x:.3g}"
    return math.nan, f"above {xs[-1]:g}"


def thresholds(points: Sequence[PointSummary]) -> list[dict[str, Any]]:
    """The threshold estimate of each family of points along the x axis."""
    x = x_axis(points)
    out = []
    for key, fam in _families(points, x).items():
        value, text = threshold([x_value(p, x) for p in fam], [p.switched for p in fam])
        out.append({"family": dict(key), "parameter": x, "value": value, "text": text})
    return out


def plot_phase_diagram(path: str | os.PathLike[str], points: Sequence[PointSummary]) -> Path:
    """Wall speed (mean ± s.e.) and the fractions of runs that nucleated / switched, against the swept
    parameter, with the estimated threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x_axis(points)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True, dpi=130)
    for i, (key, fam) in enumerate(_families(points, x).items()):
        color = f"C{i % 10}"
        xs = [x_value(p, x) for p in fam]
        label = ", ".join(f"{k} = {v:g}" for k, v in key) or None
        a1.errorbar(xs, [p.mean["wall_speed"] for p in fam], yerr=[p.sem["wall_speed"] for p in fam],
                    fmt="o-", color=color, capsize=3, label=label)
        a2.plot(xs, [p.nucleated for p in fam], "s--", color=color, mfc="none", label="nucleated" if i == 0
                else None)
        a2.plot(xs, [p.switched for p in fam], "o-", color=color, label="switched (ξ reached 0.5)" if i == 0
                else None)
        value, text = threshold(xs, [p.switched for p in fam])
        if math.isfinite(value):
            for ax in (a1, a2):
                ax.axvline(value, color=color, ls=":", lw=1.2)
            a2.annotate(f"threshold ≈ {text}", (value, 0.5), textcoords="offset points", xytext=(5, -14),
                        color=color, fontsize=8)
        else:
            a2.text(0.02, 0.9 - 0.08 * i, f"threshold {text}", transform=a2.transAxes, color=color,
                    fontsize=8)
    window = points[0].runs[0].metrics.window if points and points[0].runs else SPEED_WINDOW
    a1.set_ylabel(f"wall speed [columns / (1/γ)]\n(fit over {window[0]:g} ≤ ξ ≤ {window[1]:g}; ± s.e.)")
    a1.grid(alpha=0.3)
    if any(k for k in _families(points, x)):
        a1.legend(fontsize=8)
    a2.set_ylabel("fraction of runs")
    a2.set_ylim(-0.05, 1.05)
    a2.axhline(0.5, color="0.6", lw=0.8)
    a2.legend(fontsize=8, loc="lower right")
    a2.grid(alpha=0.3)
    a2.set_xlabel(x)
    p0 = points[0].runs[0].traj.params if points and points[0].runs else None
    n = max((len(p.runs) for p in points), default=0)
    if p0 is not None:
        a1.set_title(f"dynamical phase diagram, {p0.lx}×{p0.ly}, T = {p0.temperature:g}, up to {n} seeds "
                     f"per point", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_xi_families(path: str | os.PathLike[str], points: Sequence[PointSummary]) -> Path:
    """Mean ξ(t) over the seeds of each point, with a ±1σ (seed spread) band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x_axis(points)
    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=130)
    cmap = plt.get_cmap("viridis")
    shown = [p for p in points if p.runs]
    for i, p in enumerate(shown):
        n = min(len(r.traj.series_xi) for r in p.runs)
        if n == 0:
            continue
        xi = np.stack([np.asarray(r.traj.series_xi[:n]) for r in p.runs])
        t = np.asarray(p.runs[0].traj.series_step[:n]) * p.runs[0].traj.dt
        mean = xi.mean(axis=0)
        std = xi.std(axis=0, ddof=1) if len(xi) > 1 else np.zeros_like(mean)
        color = cmap(i / max(1, len(shown) - 1))
        label = ", ".join(f"{k} = {v:g}" for k, v in p.swept.items()) or f"{x} = {x_value(p, x):g}"
        ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.plot(t, mean, color=color, lw=1.6, label=f"{label} ({len(xi)} seeds)")
    ax.set_xlabel(r"time $t$ [$1/\gamma$]")
    ax.set_ylabel(r"mean $\xi(t)$ (metallic fraction), band ±1σ over seeds")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=1 if len(shown) < 8 else 2)
    ax.set_title(f"ξ(t) families across {x}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
