"""The paper's NEGF method: a uniform Riemann sum over energy, one dense solve per point.

    n_i ≈ Σ_ε Δε/2π Σ_k |G^r_ik(ε)|² 2Γ_k f(ε - mu_k),   ε = e_min, e_min + Δε, …, e_max

Kept as a reference for benchmarks and convergence studies; the production solver is
:func:`neqforce.physics.electron_density` (exact, no grid). With Δε = 0.003 the sum does not resolve
bulk states of width gamma_bath = 0.001.
"""

from __future__ import annotations

import numpy as np

from .lattice import check_configuration, hamiltonian, reservoirs
from .params import HolsteinParams

#: The paper's grid: Δε = 0.003 on [-6, 6] (4001 points).
PAPER_STEP = 0.003
PAPER_WINDOW = (-6.0, 6.0)


def energy_grid(step: float = PAPER_STEP, window: tuple[float, float] = PAPER_WINDOW) -> np.ndarray:
    """Uniform grid from window[0] to window[1] inclusive, spacing ``step``."""
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    n = int(round((window[1] - window[0]) / step)) + 1
    return window[0] + step * np.arange(n)


def fermi(e: np.ndarray, temperature: float) -> np.ndarray:
    """Fermi–Dirac occupation f(e) (k_B = 1); a step function at T = 0."""
    if temperature == 0.0:
        return np.where(e < 0, 1.0, np.where(e > 0, 0.0, 0.5))
    return 0.5 * (1.0 - np.tanh(e / (2.0 * temperature)))


def electron_density_riemann(q: np.ndarray, params: HolsteinParams, *, step: float = PAPER_STEP,
                             window: tuple[float, float] = PAPER_WINDOW,
                             energies: np.ndarray | None = None, batch: int = 8) -> np.ndarray:
    """n_i by the paper's Riemann sum (shape (lx, ly)); ``energies`` overrides the grid.

    ``batch`` energies are inverted at once as a stacked (batch, N, N) array.
    """
    q = check_configuration(q, params)
    eps = energy_grid(step, window) if energies is None else np.asarray(energies, dtype=np.float64)
    de = step if energies is None else (float(eps[1] - eps[0]) if eps.size > 1 else step)
    classes = [(gam.ravel(), mu) for gam, mu in reservoirs(params)]
    gamma_total = sum(gam for gam, _ in classes)
    n_sites = params.n_sites
    h_eff = hamiltonian(q, params).astype(complex)
    h_eff[np.diag_indices(n_sites)] -= 1j * gamma_total
    eye = np.eye(n_sites)
    n = np.zeros(n_sites)
    for start in range(0, eps.size, batch):
        e = eps[start:start + batch]
        g_r = np.linalg.inv(e[:, None, None] * eye - h_eff)  # (b, N, N)
        weight = sum(2.0 * gam[None, :] * fermi(e[:, None] - mu, params.temperature)
                     for gam, mu in classes)  # (b, N)
        n += np.einsum("bik,bk->i", (g_r * g_r.conj()).real, weight)
    return (n * de / (2.0 * np.pi)).reshape(params.shape)
