"""Forces on the lattice modes and the elastic energy (SPEC §2)."""

from __future__ import annotations

import numpy as np

from .lattice import check_configuration, neighbour_sum
from .params import HolsteinParams


def elastic_energy(q: np.ndarray, params: HolsteinParams) -> float:
    """E_lat = k/2 Σ Q_i² + kappa Σ_<ij> Q_i Q_j (each bond once; ly = 2 counts both y-bonds)."""
    q = check_configuration(q, params)
    return float(0.5 * params.k * np.sum(q * q) + 0.5 * params.kappa * np.sum(q * neighbour_sum(q)))


def elastic_force(q: np.ndarray, params: HolsteinParams) -> np.ndarray:
    """-∂E_lat/∂Q_i = -k Q_i - kappa Σ_{j nn of i} Q_j, shape (..., lx, ly) (batches allowed)."""
    q = np.asarray(q, dtype=np.float64)
    return -params.k * q - params.kappa * neighbour_sum(q)


def electronic_force(density: np.ndarray, params: HolsteinParams) -> np.ndarray:
    """Generalized Hellmann–Feynman force -<∂H/∂Q_i> = g (n_i - 1/2), shape (..., lx, ly)."""
    return params.g * (np.asarray(density, dtype=np.float64) - 0.5)


def forces(q: np.ndarray, params: HolsteinParams, density: np.ndarray) -> np.ndarray:
    """Total force F_i = g (n_i - 1/2) - k Q_i - kappa Σ_nn Q_j, shape (lx, ly) (SPEC §2).

    Nonconservative when V != 0. ``density`` is n_i from :func:`electron_density` (or a model).
    """
    q = check_configuration(q, params)
    density = check_configuration(density, params, name="density")
    return electronic_force(density, params) + elastic_force(q, params)


def negf_forces(q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
    """(F, n) from the exact NEGF density: the reference force field."""
    from .negf import electron_density

    n = electron_density(q, params)
    return forces(q, params, n), n
