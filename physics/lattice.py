"""Lattice geometry, the tight-binding Hamiltonian and the reservoirs (SPEC §1–3).

Arrays with one value per site have shape (lx, ly), indexed q[x, y]; flat index x * ly + y.
x is open (x = 0 touches the left electrode, x = lx-1 the right one), y is periodic.
"""

from __future__ import annotations

import numpy as np

from .params import HolsteinParams


def check_configuration(q: object, params: HolsteinParams, name: str = "q") -> np.ndarray:
    """Return q as a float64 (lx, ly) array, or raise ValueError naming the problem."""
    arr = np.asarray(q)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.shape != params.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected (lx, ly) = {params.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at site x={bad[0]}, y={bad[1]})")
    return arr


def neighbour_sum(q: np.ndarray) -> np.ndarray:
    """Σ_{j nn of i} q_j for every site, shape (..., lx, ly): open in x, periodic in y.

    For ly = 2 both y-bonds join the same pair and both count; for ly = 1 there are no y-bonds.
    """
    s = np.zeros_like(q)
    s[..., 1:, :] += q[..., :-1, :]
    s[..., :-1, :] += q[..., 1:, :]
    if q.shape[-1] > 1:
        s += np.roll(q, 1, axis=-1) + np.roll(q, -1, axis=-1)
    return s


def bonds(lx: int, ly: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat site indices (i, j) of every nearest-neighbour bond, each bond once.

    For ly = 2 the two y-bonds of a pair are listed twice (hopping -2t between them).
    """
    idx = np.arange(lx * ly).reshape(lx, ly)
    i_x, j_x = idx[:-1, :].ravel(), idx[1:, :].ravel()
    if ly == 1:
        return i_x, j_x
    i_y, j_y = idx.ravel(), np.roll(idx, -1, axis=1).ravel()
    return np.concatenate([i_x, i_y]), np.concatenate([j_x, j_y])


def hamiltonian(q: np.ndarray, params: HolsteinParams) -> np.ndarray:
    """Dense real symmetric H (N×N): H_ij = -t on nn bonds, H_ii = -g Q_i (SPEC §2)."""
    n = params.n_sites
    h = np.zeros((n, n))
    i, j = bonds(params.lx, params.ly)
    np.add.at(h, (i, j), -params.t)
    np.add.at(h, (j, i), -params.t)
    h[np.diag_indices(n)] = -params.g * np.asarray(q, dtype=np.float64).ravel()
    return h


def reservoirs(params: HolsteinParams) -> list[tuple[np.ndarray, float]]:
    """The reservoirs as (Γ per site (lx, ly), chemical potential) pairs, wide-band limit (SPEC §3).

    Left electrode (column 0, mu = -V), right electrode (column lx-1, mu = 0) and the bulk bath
    (columns 1 … lx-2, mu = 0). The two mu = 0 reservoirs are merged: only the sum of their Γ matters.
    For lx = 1 the single column touches both electrodes (Γ = 2 gamma_lead).
    """
    left = np.zeros(params.shape)
    left[0, :] = params.gamma_lead
    rest = np.full(params.shape, params.gamma_bath)
    rest[0, :] = 0.0
    rest[-1, :] = params.gamma_lead
    return [(left, -params.voltage), (rest, 0.0)]


def broadening(params: HolsteinParams) -> np.ndarray:
    """Total Γ_i per site, shape (lx, ly): gamma_lead on columns 0 and lx-1, gamma_bath elsewhere."""
    return sum(gam for gam, _ in reservoirs(params))


def staggered_sign(lx: int, ly: int) -> np.ndarray:
    """(-1)^(x+y), shape (lx, ly)."""
    return np.where((np.arange(lx)[:, None] + np.arange(ly)[None, :]) % 2 == 0, 1.0, -1.0)
