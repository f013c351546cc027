"""CDW order parameter, bulk CDW amplitude and the domain-wall position ξ (SPEC §5)."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import psi

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
    return 0.5 - psi(0.5 + (gamma + 1j * energy) / (2.0 * math.pi * temperature)).imag / math.pi


@functools.lru_cache(maxsize=64)
def _bulk_amplitude(t: float, g: float, k: float, kappa: float, gamma: float, temperature: float,
                    nk: int) -> float:
    kk = 2.0 * math.pi * (np.arange(nk) + 0.5) / nk
    eps = -2.0 * t * (np.cos(kk)[:, None] + np.cos(kk)[None, :])
    stiffness = k - 4.0 * kappa

    def residual(q0: float) -> float:
        delta = g * q0
        e = np.sqrt(eps * eps + delta * delta)
        occ = _lorentzian_occupation(-e, gamma, temperature) - _lorentzian_occupation(e, gamma, temperature)
        dn = np.mean(np.where(e > 0, delta / (2.0 * np.where(e > 0, e, 1.0)), 0.0) * occ)
        return g * dn - stiffness * q0

    upper = g / stiffness  # |n - 1/2| <= 1/2
    if stiffness <= 0 or residual(1e-6) <= 0:
        return 0.0
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


def nucleation_time(time: np.ndarray, xi: np.ndarray, lx: int) -> float:
    """First time after which at least one column stays metallic (ξ >= 1/lx for all later times).

    Returns nan if the lattice never stays metallic (e.g. below the threshold voltage).
    """
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    metallic = xi >= (1.0 - 1e-9) / lx
    if not metallic.size or not metallic[-1]:
        return float("nan")
    # last index that is not metallic; nucleation is the step right after it
    off = np.flatnonzero(~metallic)
    return float(time[off[-1] + 1] if off.size else time[0])


def wall_speed(time: np.ndarray, xi: np.ndarray, lx: int, window: tuple[float, float] = (0.2, 0.8)) -> float:
    """Domain-wall speed in columns per time unit: slope of a least-squares line through ξ·lx(t)
    over the propagation window window[0] <= ξ <= window[1] (away from both electrodes).

    Returns nan when fewer than 5 points fall in the window.
    """
    time, xi = np.asarray(time, dtype=float), np.asarray(xi, dtype=float)
    inside = (xi >= window[0]) & (xi <= window[1])
    if np.count_nonzero(inside) < 5:
        return float("nan")
    slope, _ = np.polyfit(time[inside], xi[inside] * lx, 1)
    return float(slope)
