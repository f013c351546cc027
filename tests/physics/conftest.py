"""Independent references for the physics tests ("one reference, many fast paths").

Nothing here calls the code under test: the Hamiltonian, the reservoirs, the stiffness matrix and
the densities are rebuilt from SPEC §1–3 with explicit loops and brute-force numerics, so that a
bug in ``neqforce.physics`` cannot hide in its own reference.

* :func:`ref_hamiltonian`: H[i, j] = -t on nn bonds (open x, periodic y; ly = 2: both y-bonds
  count, -2t; ly = 1: no y-bonds), H[i, i] = -g Q_i; flat index x * ly + y.
* :func:`ref_reservoirs`: (Γ_i per flat site, mu) for the left electrode (x = 0, mu = -V), the right
  electrode (x = lx-1, mu = 0) and the bulk bath (all other sites, mu = 0).
* :func:`quad_density`: n_i = ∫ dε/2π Σ_k |G^r_ik(ε)|² Σ_c 2Γ_ck f(ε - mu_c) by adaptive quadrature
  (``scipy.integrate.quad_vec``), one dense solve per energy, breakpoints at the real parts of the
  eigenvalues of H_eff and at the chemical potentials (narrow bath peaks of width 0.001).
* :func:`lorentzian_fermi_occupation`: ∫ dε/2π f(ε) 2γ/((ε - E)² + γ²) in closed form.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.integrate import quad_vec
from scipy.special import digamma

from neqforce.physics import HolsteinParams


def ref_hamiltonian(q: np.ndarray, p: HolsteinParams) -> np.ndarray:
    """Dense H (N×N) built site by site from SPEC §2."""
    lx, ly = p.lx, p.ly
    n = lx * ly
    h = np.zeros((n, n))
    for x in range(lx):
        for y in range(ly):
            i = x * ly + y
            h[i, i] = -p.g * q[x, y]
            neighbours = []
            if x > 0:
                neighbours.append((x - 1, y))
            if x < lx - 1:
                neighbours.append((x + 1, y))
            if ly > 1:  # for ly = 2 both entries are the same site: hopping -2t
                neighbours += [(x, (y + 1) % ly), (x, (y - 1) % ly)]
            for xj, yj in neighbours:
                h[i, xj * ly + yj] += -p.t
    return h


def ref_reservoirs(p: HolsteinParams) -> list[tuple[np.ndarray, float]]:
    """[(Γ per flat site (N,), mu)] for left electrode, right electrode and bath (SPEC §3 table)."""
    lx, ly = p.lx, p.ly
    left, right, bath = np.zeros(lx * ly), np.zeros(lx * ly), np.zeros(lx * ly)
    for x in range(lx):
        for y in range(ly):
            i = x * ly + y
            if x == 0:
                left[i] += p.gamma_lead
            if x == lx - 1:
                right[i] += p.gamma_lead
            if 0 < x < lx - 1:
                bath[i] += p.gamma_bath
    return [(left, -p.voltage), (right, 0.0), (bath, 0.0)]


def ref_adjacency(lx: int, ly: int) -> np.ndarray:
    """Nearest-neighbour adjacency matrix A (N×N) with the SPEC §2 conventions (ly = 2 doubled)."""
    p = HolsteinParams(lx=lx, ly=ly, t=1.0)
    return -ref_hamiltonian(np.zeros((lx, ly)), p)


def fermi(e: float, mu: float, temperature: float) -> float:
    """Fermi–Dirac occupation of energy e; a step at T = 0."""
    if temperature == 0.0:
        return 1.0 if e < mu else (0.0 if e > mu else 0.5)
    return 0.5 * (1.0 - math.tanh((e - mu) / (2.0 * temperature)))


def quad_density(q: np.ndarray, p: HolsteinParams, epsabs: float = 1e-13) -> np.ndarray:
    """Steady-state density (lx, ly) of SPEC §3 by adaptive quadrature over the whole real axis."""
    res = ref_reservoirs(p)
    gamma = sum(g for g, _ in res)
    h_eff = ref_hamiltonian(np.asarray(q, dtype=np.float64), p) - 1j * np.diag(gamma)
    eye = np.eye(p.n_sites)

    def integrand(e: float) -> np.ndarray:
        g_r = np.linalg.solve(e * eye - h_eff, eye)
        weight = sum(2.0 * g * fermi(e, mu, p.temperature) for g, mu in res)
        return (np.abs(g_r) ** 2) @ weight / (2.0 * math.pi)

    lam = np.linalg.eigvals(h_eff).real
    mus = [mu for _, mu in res]
    edge = float(max(np.max(np.abs(lam)), *(abs(m) for m in mus))) + 2.0
    points = np.unique(np.round(np.concatenate([lam, mus]), 12))
    kw = dict(epsabs=epsabs, epsrel=0.0, norm="max", limit=20000)
    lower = quad_vec(integrand, -np.inf, -edge, **kw)[0]
    middle = quad_vec(integrand, -edge, edge, points=points, **kw)[0]
    upper = quad_vec(integrand, edge, np.inf, **kw)[0]
    return (lower + middle + upper).reshape(p.shape)


def lorentzian_fermi_occupation(energy: np.ndarray, gamma: float, temperature: float) -> np.ndarray:
    """∫ dε/2π f(ε) 2γ/((ε - E)² + γ²) = 1/2 - Im ψ(1/2 + (γ + iE)/2πT)/π (T → 0: 1/2 - atan(E/γ)/π)."""
    energy = np.asarray(energy, dtype=np.float64)
    if temperature == 0.0:
        return 0.5 - np.arctan(energy / gamma) / math.pi
    return 0.5 - digamma(0.5 + (gamma + 1j * energy) / (2.0 * math.pi * temperature)).imag / math.pi


def checkerboard(lx: int, ly: int, q0: float) -> np.ndarray:
    """Q = q0 (-1)^(x+y), shape (lx, ly)."""
    x, y = np.meshgrid(np.arange(lx), np.arange(ly), indexing="ij")
    return q0 * np.where((x + y) % 2 == 0, 1.0, -1.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The independent references of this module (test modules cannot import conftest)."""
    return SimpleNamespace(hamiltonian=ref_hamiltonian, reservoirs=ref_reservoirs, adjacency=ref_adjacency,
                           fermi=fermi, quad_density=quad_density,
                           lorentzian_fermi_occupation=lorentzian_fermi_occupation,
                           checkerboard=checkerboard)
