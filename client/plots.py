"""Figures of a BD run (matplotlib, Agg canvas; no pyplot state is touched).

* :func:`plot_density_snapshots`: n_i maps at several times, like the paper's Fig. 3 — x horizontal
  with the gate (left electrode, mu_L = -V) on the left and the substrate (mu_R = 0) on the right.
* :func:`plot_xi`: domain-wall position ξ(t) (metallic fraction of the lattice), like Fig. 4, raw
  per-step values and a running mean over one time unit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from neqforce.atomic import atomic_write_bytes
from neqforce.physics import local_order
from neqforce.trajectory import Trajectory

#: Largest lx or ly drawn site by site (n_i); larger lattices show the staggered density instead.
MAX_SITE_RESOLVED = 64
#: Largest figure (inches; at the default 150 dpi, 2400×2100 px) whatever the lattice's aspect ratio.
MAX_FIGURE_IN = (16.0, 14.0)
_GATE = "#c28e0e"
_SUBSTRATE = "#5f6b7a"


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _describe(traj: Trajectory) -> str:
    p = traj.params
    who = traj.backend or "?"
    if traj.model and traj.model != traj.backend:
        who += f" ({Path(traj.model).name})"
    return (f"{p.lx}×{p.ly}, V = {p.voltage:g}, T = {p.temperature:g}, dt = {traj.dt:g}, "
            f"seed {traj.seed}; forces: {who}")


def snapshot_indices(n_frames: int, n_panels: int = 6) -> list[int]:
    """Indices of ``n_panels`` frames evenly spread over ``n_frames`` (first and last included)."""
    if n_frames <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, min(n_panels, n_frames))})


def _running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean (window shrinks at the ends so the curve keeps its length)."""
    window = min(window, x.size)
    if window <= 1:
        return x.astype(float)
    kernel = np.ones(window)
    num = np.convolve(x, kernel, mode="same")
    den = np.convolve(np.ones_like(x, dtype=float), kernel, mode="same")
    return num / den


def plot_density_snapshots(traj: Trajectory, path: str | os.PathLike[str], n_panels: int = 6,
                           dpi: int = 150) -> Path:
    """Grid of n_i(x, y) maps at ``n_panels`` saved times (Fig. 3 style), with electrodes marked.

    n_i on a fixed [0, 1] scale, diverging about half filling (the CDW is a checkerboard about 1/2;
    the metal next to the gate is uniform and depleted at V > 0). Lattices wider than
    ``MAX_SITE_RESOLVED`` show the density analogue of the order parameter m_i (docs/physics.md),
    (-1)^(x+y) (n_i - mean of n over the nn) / 2: uniform (±δ/2) in a CDW domain, ~0 in the metal.
    When the backend returned no density, the staggered CDW order m_i of Q.
    """
    fr = traj.frames()
    idx = snapshot_indices(len(fr["step"]), n_panels)
    if not idx:
        raise ValueError("the trajectory has no saved frames to plot")
    density = fr["density"][idx]
    have_density = bool(np.all(np.isfinite(density)))
    p = traj.params
    if have_density and max(p.lx, p.ly) <= MAX_SITE_RESOLVED:
        # an occupation: fixed scale [0, 1], half filling (the metal) white, the CDW a checkerboard
        maps, label, cmap, vmin, vmax = density, r"electron density $n_i$", "RdBu_r", 0.0, 1.0
    elif have_density:
        # sites too small to see: the local staggered modulation, uniform in a CDW domain, ~0 in the metal
        maps = local_order(density)
        label = r"CDW density modulation $(-1)^{x+y}(n_i-\bar n_{nn})/2$"
        cmap, vmin, vmax = "RdBu_r", -0.5, 0.5
    else:
        maps, label, cmap = local_order(fr["q"][idx]), r"staggered CDW order $m_i$", "PuOr"
        half = max(float(np.max(np.abs(maps))), 1e-3)
        vmin, vmax = -half, half
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(np.min(maps) < vmin), bool(np.max(maps) > vmax))]
    lx, ly = p.lx, p.ly
    xi_by_step = dict(zip(traj.series_step, traj.series_xi, strict=True))
    ncols = {1: 1, 2: 2, 3: 3, 4: 2}.get(len(idx), 3 if len(idx) <= 6 else 4)
    nrows = int(np.ceil(len(idx) / ncols))
    panel_w = 3.1
    # panels follow the lattice's shape (aspect="equal"), but a 1-column or 1-row lattice must not make
    # a figure of tens of thousands of pixels: the panel aspect is clamped and the figure capped
    aspect = min(max(ly / lx, 0.25), 3.0)
    fig = Figure(figsize=(min(max(6.4, panel_w * ncols + 1.3), MAX_FIGURE_IN[0]),
                          min(panel_w * aspect * nrows + 1.4, MAX_FIGURE_IN[1])), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    bar = max(1.0, 0.06 * lx)
    image = None
    for k, ax in enumerate(axes):
        if k >= len(idx):
            ax.set_visible(False)
            continue
        step = int(fr["step"][idx[k]])
        image = ax.imshow(maps[k].T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=(-0.5, lx - 0.5, -0.5, ly - 0.5), interpolation="nearest", aspect="equal")
        for x0, colour, text in ((-0.5 - bar, _GATE, "gate"), (lx - 0.5, _SUBSTRATE, "substrate")):
            ax.add_patch(Rectangle((x0, -0.5), bar, ly, facecolor=colour, edgecolor="none", clip_on=False))
            ax.text(x0 + bar / 2, (ly - 1) / 2, text, rotation=90, ha="center", va="center",
                    color="white", fontsize=7, fontweight="bold")
        ax.set_xlim(-0.5 - bar, lx - 0.5 + bar)
        ax.set_ylim(-0.5, ly - 0.5)
        xi = xi_by_step.get(step)
        title = f"t = {float(fr['time'][idx[k]]):g}"
        if xi is not None:
            title += f",  ξ = {xi:.2f}"
            if 0.0 < xi < 1.0:
                ax.axvline(xi * lx - 0.5, color="k", lw=1.0, ls="--", alpha=0.7)
        ax.set_title(title, fontsize=10)
        if k % ncols == 0:
            ax.set_ylabel("y")
        if k + ncols >= len(idx):  # lowest panel of its column
            ax.set_xlabel("x  (transport direction)")
            ax.xaxis.set_tick_params(labelbottom=True)
    cbar = fig.colorbar(image, ax=axes[: len(idx)].tolist(), shrink=0.9, pad=0.02, extend=extend)
    cbar.set_label(label)
    name = label.split(" $")[0]
    fig.suptitle(f"{name[0].upper()}{name[1:]}: {_describe(traj)}\n"
                 r"gate $\mu_L=-V$ (left), substrate $\mu_R=0$ (right); dashed line: wall at $\xi\,l_x$",
                 fontsize=9)
    return _save(fig, path, dpi)


def plot_xi(trajs: Trajectory | Sequence[Trajectory], path: str | os.PathLike[str],
            labels: Sequence[str] | None = None, smooth_time: float = 1.0, dpi: int = 150) -> Path:
    """ξ(t) of one or more runs (Fig. 4 style): markers every step, line = running mean over
    ``smooth_time`` time units; right axis in metallic columns (ξ l_x)."""
    if isinstance(trajs, Trajectory):
        trajs = [trajs]
    if not trajs:
        raise ValueError("no trajectories to plot")
    if labels is None:
        labels = [f"{t.backend or 'run'} (seed {t.seed})" for t in trajs]
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["#2a9d55", "#e0a800", "#3b6fb6", "#c0392b", "#7d3c98", "#555555"]
    markers = ["o", "^", "s", "D", "v", "x"]
    t_max, max_every = 0.0, 1
    for k, (traj, label) in enumerate(zip(trajs, labels, strict=True)):
        time, xi = traj.xi_series()
        if time.size == 0:
            continue
        colour, marker = colours[k % len(colours)], markers[k % len(markers)]
        every = max(1, time.size // 60)
        max_every = max(max_every, every)
        ax.plot(time[::every], xi[::every], ls="none", marker=marker, ms=3.5, mfc="none", color=colour,
                alpha=0.8, label=f"{label}")
        window = max(1, int(round(smooth_time / traj.dt)))
        if window > 1:
            ax.plot(time, _running_mean(xi, window), color=colour, lw=1.6)
        t_max = max(t_max, float(time[-1]))
    ax.set_xlabel(r"time $t$  ($1/\gamma$)")
    ax.set_ylabel(r"domain-wall position $\xi$  (metallic fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(t_max, 1e-9))
    ax.grid(alpha=0.3)
    lx = trajs[0].params.lx
    if all(t.params.lx == lx for t in trajs):
        right = ax.secondary_yaxis("right", functions=(lambda v: v * lx, lambda c: c / lx))
        right.set_ylabel("metallic columns")
    every_txt = "every step" if max_every == 1 else f"every {max_every}th step"
    ax.legend(loc="upper left", fontsize=8, frameon=False, title_fontsize=7,
              title=f"markers: ξ at {every_txt}; lines: running mean over Δt = {smooth_time:g}")
    ax.set_title(_describe(trajs[0]) if len(trajs) == 1 else "domain-wall position ξ(t)", fontsize=9)
    return _save(fig, path, dpi)
