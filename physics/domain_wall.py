"""CDW order parameter, bulk CDW amplitude and the domain-wall position ξ (SPEC §5)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .lattice import neighbour_sum, staggered_sign
from .params import HolsteinParams


def local_order(q: np.ndarray) -> np.ndarray:
    """m_i = (-1)^(x+y) (Q_i - mean of Q over the nn of i) / 2, shape (..., lx, ly).

    Equals q0 on a perfect ±q0 checkerboard. Edge columns average over their existing neighbours.
    """
    q = np.asarray(q, dtype=np.float64)
    lx, ly = q.shape[-2:]
    count = neighbour_sum(np.ones((lx, ly)))
    return staggered_sign(lx, ly) * (q - neighbour_sum(q) / count) / 2.0


def _lorentzian_occupation(energy: np.ndarray, gamma: float, temperature: float) -> np.ndarray:
    """∫ dε/2π f(ε) 2Γ / ((ε - E)² + Γ²) = 1/2 - Im ψ(1/2 + (Γ + iE)/2πT) / π (mu = 0)."""
    if temperature == 0.0:
        return 0.5 - np.arctan(energy / gamma) / math.pi
    from scipy.special import psi  # here, not at import: scipy.special costs every CLI start ~0.2 s

    return 0.5 - psi(0.5 + (gamma + 1j * energy) / (2.0 * math.pi * temperature)).imag / math.pi


def _band_energies(t: float, nk: int) -> tuple[np.ndarray, np.ndarray]:
    """eps_k = -2t (cos kx + cos ky) on the nk × nk midpoint grid k = 2π (n + 1/2) / nk, as distinct
    points with weights summing to 1 (the mean over the grid is the weighted sum). For even nk the grid's
    symmetries are used: cos k_n = cos k_(nk-1-n) and kx ↔ ky, so nk/2 (nk/2 + 1)/2 points stand for nk²
    (~8× fewer digamma evaluations per gap-equation residual; the same mean up to rounding)."""
    c = np.cos(2.0 * math.pi * (np.arange(nk) + 0.5) / nk)
    if nk % 2 == 0:
        a, b = np.triu_indices(nk // 2)
        weight = np.where(a == b, 1.0, 2.0)
    else:
        a, b = (i.ravel() for i in np.indices((nk, nk)))
        weight = np.ones(a.size)
    return -2.0 * t * (c[a] + c[b]), weight / weight.sum()


@functools.lru_cache(maxsize=64)
def _bulk_amplitude(t: float, g: float, k: float, kappa: float, gamma: float, temperature: float,
                    nk: int) -> float:
    eps, weight = _band_energies(t, nk)
    stiffness = k - 4.0 * kappa

    def residual(q0: float) -> float:
        delta = g * q0
        e = np.sqrt(eps * eps + delta * delta)
        occ = _lorentzian_occupation(-e, gamma, temperature) - _lorentzian_occupation(e, gamma, temperature)
        dn = np.sum(weight * np.where(e > 0, delta / (2.0 * np.where(e > 0, e, 1.0)), 0.0) * occ)
        return g * dn - stiffness * q0

    upper = g / stiffness  # |n - 1/2| <= 1/2
    if stiffness <= 0 or residual(1e-6) <= 0:
        return 0.0
    from scipy.optimize import brentq  # here: importing scipy.optimize costs every CLI start ~0.3 s

    return float(brentq(residual, 1e-6, upper, xtol=1e-13))


def bulk_cdw_amplitude(params: HolsteinParams, nk: int = 128) -> float:
    """Staggered amplitude q0 of the relaxed V = 0 CDW deep in the bulk (infinite lattice).

    Self-consistent two-sublattice solution q0 = g (n_A - 1/2) / (k - 4 kappa), bands
    ±sqrt(eps_k² + (g q0)²), each state broadened by gamma_bath, at the given temperature.
    This is the ``q0_bulk`` of the domain-wall criterion; it does not depend on lx, ly or V.
    """
    return _bulk_amplitude(params.t, params.g, params.k, params.kappa, params.gamma_bath,
                           params.temperature, nk)


def metallic_columns(q: np.ndarray, q0_bulk: float) -> np.ndarray:
    """Boolean per column (shape (..., lx)): mean_y |m| below q0_bulk / 2."""
    return np.mean(np.abs(local_order(q)), axis=-1) < 0.5 * q0_bulk


def domain_wall_position(q: np.ndarray, params: HolsteinParams, q0_bulk: float | None = None) -> float:
    """ξ = (number of metallic columns) / lx, in [0, 1] (SPEC §5); q0_bulk defaults to the bulk value."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != params.shape:
        raise ValueError(f"q has shape {q.shape}, expected (lx, ly) = {params.shape}")
    if q0_bulk is None:
        q0_bulk = bulk_cdw_amplitude(params)
    return float(np.count_nonzero(metallic_columns(q, q0_bulk)) / params.lx)


def domain_wall_positions(q: np.ndarray, params: HolsteinParams,
                          q0_bulk: float | np.ndarray | None = None) -> np.ndarray:
    """ξ of every lattice of a batch q (..., lx, ly): shape (...), the same floats as
    :func:`domain_wall_position` on each lattice alone. ``q0_bulk``: a scalar or one value per lattice
    (shape (...)); default the bulk value of ``params``."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-2:] != params.shape:
        raise ValueError(f"q has shape {q.shape}, expected (..., lx, ly) with (lx, ly) = {params.shape}")
    if q0_bulk is None:
        q0_bulk = bulk_cdw_amplitude(params)
    q0 = np.asarray(q0_bulk, dtype=np.float64)
    metallic = metallic_columns(q, q0[..., None] if q0.ndim else q0)
    return np.count_nonzero(metallic, axis=-1) / params.lx


#: Default ξ window of the wall-speed fit: from the first step with ξ >= 0.2 to the first with ξ >= 0.8
#: (the wall has left the left electrode and not yet felt the right one).
SPEED_WINDOW = (0.2, 0.8)
#: Fewest samples a wall-speed fit uses (fewer: nan).
SPEED_MIN_POINTS = 5
#: ξ·lx is a whole number of columns: counts are compared with this tolerance, which absorbs the rounding
#: of k / lx — float32 included (a file or pack storing ξ in float32 has 27/30 = 0.89999998; its count is
#: off by ≤ 6e-8·lx, below 1e-3 for any lx ≤ 16 000) — and is far below the one-column spacing.
_TOL = 1e-3
#: The same for a bare ξ compared with a level when lx is not given.
_TOL_XI = 1e-6


def nucleation_time(time: np.ndarray, xi: np.ndarray, lx: int) -> float:
    """Nucleation time t_nuc (units of 1/γ): the earliest time after which at least one column stays
    metallic, i.e. ξ >= 1/lx at that sample and at every later one.

    Returns nan if the lattice is not metallic at the last sample (no domain has nucleated for good).
    """
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    metallic = xi * lx >= 1.0 - _TOL
    if not metallic.size or not metallic[-1]:
        return float("nan")
    # last index that is not metallic; nucleation is the step right after it
    off = np.flatnonzero(~metallic)
    return float(time[off[-1] + 1] if off.size else time[0])


def time_to_xi(time: np.ndarray, xi: np.ndarray, level: float, lx: int | None = None) -> float:
    """t(ξ = level): the first time at which ξ >= ``level`` (nan if never reached).

    With ``lx``, the comparison is made on column counts ξ·lx >= level·lx (tolerant to rounding), so
    ``level = 25 / lx`` is "the wall has reached column 25".
    """
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    hit = np.flatnonzero(xi * lx >= level * lx - _TOL) if lx else np.flatnonzero(xi >= level - _TOL_XI)
    return float(time[hit[0]]) if hit.size else float("nan")


@dataclass(frozen=True)
class WallSpeedFit:
    """Least-squares line ξ·lx = v t + c over the propagation window.

    ``speed``: v in columns per unit time (1/γ); ``stderr``: its standard error from the fit residuals;
    ``n_points``: samples used; ``closed``: the wall reached the upper end of the window (else the fit
    runs to the last sample); ``window``: the ξ window.
    """

    speed: float
    stderr: float
    n_points: int
    closed: bool
    window: tuple[float, float]


def fit_wall_speed(time: np.ndarray, xi: np.ndarray, lx: int, window: tuple[float, float] = SPEED_WINDOW,
                   min_points: int = SPEED_MIN_POINTS) -> WallSpeedFit:
    """Domain-wall speed over the ξ window ``(lo, hi)``: a straight line through ξ·lx versus t over
    the contiguous samples from the first with ξ >= lo to the first with ξ >= hi (to the last sample
    if the wall never reaches hi). nan when fewer than ``min_points`` samples fall in that range.
    """
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    lo, hi = float(window[0]), float(window[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"wall-speed window must satisfy 0 <= lo < hi <= 1, got {window}")
    columns = xi * lx
    start = np.flatnonzero(columns >= lo * lx - _TOL)
    end = np.flatnonzero(columns >= hi * lx - _TOL)
    closed = bool(end.size)
    if start.size == 0:
        return WallSpeedFit(math.nan, math.nan, 0, closed, (lo, hi))
    stop = int(end[0]) if closed else len(columns) - 1
    n = stop - int(start[0]) + 1
    if n < max(3, min_points):
        return WallSpeedFit(math.nan, math.nan, max(n, 0), closed, (lo, hi))
    t, c = time[start[0]:stop + 1], columns[start[0]:stop + 1]
    (slope, _), cov = np.polyfit(t, c, 1, cov=True)
    return WallSpeedFit(float(slope), float(math.sqrt(max(cov[0, 0], 0.0))), n, closed, (lo, hi))


def wall_speed(time: np.ndarray, xi: np.ndarray, lx: int,
               window: tuple[float, float] = SPEED_WINDOW) -> float:
    """Domain-wall speed in columns per unit time (1/γ): :func:`fit_wall_speed` ``.speed``."""
    return fit_wall_speed(time, xi, lx, window).speed


@dataclass(frozen=True)
class RunMetrics:
    """The domain-wall numbers of one run (times in units of 1/γ, nan where not reached).

    ``t_nuc``: :func:`nucleation_time`; ``speed``/``speed_err``: :func:`fit_wall_speed` over
    ``window``; ``t_xi50``/``t_xi90``: :func:`time_to_xi` at 0.5/0.9; ``final_xi``: ξ at the last
    sample; ``nucleated``: t_nuc is finite; ``switched``: ξ reached 0.5 (the wall crossed half the
    device: the metallic phase invades it).
    """

    t_nuc: float
    speed: float
    speed_err: float
    t_xi50: float
    t_xi90: float
    final_xi: float
    nucleated: bool
    switched: bool
    window: tuple[float, float]


def run_metrics(time: np.ndarray, xi: np.ndarray, lx: int,
                window: tuple[float, float] = SPEED_WINDOW) -> RunMetrics:
    """All :class:`RunMetrics` of one ξ(t) series (the single implementation used by ``sweep`` and
    the benchmark scripts)."""
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    fit = fit_wall_speed(time, xi, lx, window)
    t_nuc = nucleation_time(time, xi, lx)
    t50 = time_to_xi(time, xi, 0.5, lx)
    return RunMetrics(t_nuc=t_nuc, speed=fit.speed, speed_err=fit.stderr, t_xi50=t50,
                      t_xi90=time_to_xi(time, xi, 0.9, lx),
                      final_xi=float(xi[-1]) if xi.size else math.nan,
                      nucleated=bool(np.isfinite(t_nuc)), switched=bool(np.isfinite(t50)), window=fit.window)
