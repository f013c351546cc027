"""The exact NEGF solver against independent references (SPEC §3).

* brute-force adaptive quadrature of the SPEC §3 integrand (``quad_density`` in conftest.py),
* the closed-form equilibrium density for uniform broadening (Lorentzian–Fermi occupation),
* agreement of the two exact routes (eigenvectors, Schur–Sylvester) on degenerate spectra,
* convergence of the paper's Riemann sum toward the exact result as the energy step shrinks.
"""

from __future__ import annotations

import numpy as np
import pytest

import neqforce.physics.negf as negf_module
from neqforce.physics import HolsteinParams, electron_density, electron_density_riemann

METHODS = ("eigen", "schur", "auto")
TOL_QUAD = 1e-8


@pytest.mark.parametrize("shape", [(4, 3), (6, 4), (8, 5)])
@pytest.mark.parametrize("voltage", [0.0, 1.0, 2.5])
def test_random_configurations_match_quadrature(ref, shape, voltage):
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=voltage)
    rng = np.random.default_rng([shape[0], shape[1], int(10 * voltage)])
    q = rng.normal(0.0, 1.2, p.shape)
    expected = ref.quad_density(q, p)
    for method in METHODS:
        n = electron_density(q, p, method=method)
        assert n.shape == p.shape
        assert np.max(np.abs(n - expected)) <= TOL_QUAD, method


@pytest.mark.parametrize("shape", [(5, 1), (4, 2), (6, 3)])
def test_chains_and_two_leg_ladders_match_quadrature(ref, shape):
    """ly = 1 (no y-bonds) and ly = 2 (hopping -2t between the two legs, SPEC §2)."""
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=2.0)
    q = np.random.default_rng(7).normal(0.0, 1.0, p.shape)
    expected = ref.quad_density(q, p)
    for method in METHODS:
        assert np.max(np.abs(electron_density(q, p, method=method) - expected)) <= TOL_QUAD, method


def _degenerate_configurations(ref, lx: int, ly: int) -> dict[str, np.ndarray]:
    x = np.arange(lx)[:, None] * np.ones((1, ly))
    return {
        "zero": np.zeros((lx, ly)),
        "checkerboard": ref.checkerboard(lx, ly, 2.39),
        "y-periodic": np.cos(0.7 * x) * 1.3,           # depends on x only: ±k_y degeneracies
        "y-period-2": ref.checkerboard(lx, ly, 1.0) * (1.0 + 0.3 * x / lx),
    }


@pytest.mark.parametrize("voltage", [0.0, 3.0])
def test_degenerate_configurations_match_quadrature(ref, voltage):
    p = HolsteinParams(lx=6, ly=4, voltage=voltage)
    for name, q in _degenerate_configurations(ref, p.lx, p.ly).items():
        expected = ref.quad_density(q, p)
        for method in METHODS:
            n = electron_density(q, p, method=method)
            assert np.max(np.abs(n - expected)) <= TOL_QUAD, (name, method)


@pytest.mark.parametrize("shape", [(10, 8), (12, 12)])
@pytest.mark.parametrize("voltage", [0.0, 2.5])
def test_routes_agree_on_degenerate_spectra(ref, shape, voltage):
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=voltage)
    for name, q in _degenerate_configurations(ref, *shape).items():
        n_schur = electron_density(q, p, method="schur")
        n_auto, info = electron_density(q, p, method="auto", return_info=True)
        assert np.max(np.abs(n_schur - n_auto)) <= 1e-10, (name, info)
        assert info.max_imag < 1e-10
        if info.method == "eigen":
            assert np.array_equal(n_auto, electron_density(q, p, method="eigen"))


@pytest.mark.parametrize("voltage", [0.0, 1.0, 2.5])
def test_zero_temperature_matches_quadrature_with_step_fermi(ref, voltage):
    p = HolsteinParams(lx=6, ly=4, voltage=voltage, temperature=0.0)
    q = np.random.default_rng(3).normal(0.0, 1.0, p.shape)
    expected = ref.quad_density(q, p)
    for method in METHODS:
        assert np.max(np.abs(electron_density(q, p, method=method) - expected)) <= TOL_QUAD, method


@pytest.mark.parametrize("temperature", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("gamma", [0.05, 0.4])
def test_uniform_broadening_equilibrium_closed_form(ref, temperature, gamma):
    """V = 0, Γ_i = γ on every site: n_i = Σ_a |ψ_a(i)|² occ(E_a) from diagonalising H (real symmetric)."""
    p = HolsteinParams(lx=7, ly=4, voltage=0.0, gamma_lead=gamma, gamma_bath=gamma, temperature=temperature)
    q = np.random.default_rng(11).normal(0.0, 1.5, p.shape)
    energies, psi = np.linalg.eigh(ref.hamiltonian(q, p))
    occupation = ref.lorentzian_fermi_occupation(energies, gamma, temperature)
    expected = ((np.abs(psi) ** 2) @ occupation).reshape(p.shape)
    for method in METHODS:
        assert np.max(np.abs(electron_density(q, p, method=method) - expected)) <= 1e-12, method


def test_auto_falls_back_to_schur_when_eigenvectors_are_ill_conditioned(monkeypatch):
    p = HolsteinParams(lx=6, ly=4, voltage=2.5)
    q = np.random.default_rng(5).normal(0.0, 1.0, p.shape)
    n_default, info = electron_density(q, p, return_info=True)
    assert info.method == "eigen" and 1.0 <= info.eig_cond < negf_module.EIG_COND_MAX
    monkeypatch.setattr(negf_module, "EIG_COND_MAX", 1e-3)
    n_auto, info = electron_density(q, p, method="auto", return_info=True)
    assert info.method == "schur"
    assert info.eig_cond > 1e-3
    assert np.max(np.abs(n_auto - n_default)) <= 1e-10
    with pytest.raises(np.linalg.LinAlgError, match="ill-conditioned"):
        electron_density(q, p, method="eigen")


def test_riemann_sum_converges_to_exact_as_step_shrinks(ref):
    """Bath broadening raised to 0.05 so that a grid can resolve it. The sum over a midpoint grid on
    [-W, W] must converge to the exact density minus the exact tails |ε| > W (adaptive quadrature)."""
    p = HolsteinParams(lx=6, ly=4, voltage=1.0, gamma_bath=0.05)
    q = np.random.default_rng(2).normal(0.0, 1.0, p.shape)
    window = 20.0
    tails = _tail_quadrature(ref, q, p, window)
    target = electron_density(q, p) - tails
    errors = []
    for step in (0.2, 0.1, 0.05, 0.025):
        energies = np.arange(-window + step / 2, window, step)
        errors.append(float(np.max(np.abs(electron_density_riemann(q, p, energies=energies) - target))))
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-7, errors
    # a finite window misses ~Γ_lead/(πW) at the electrode columns: one reason for an exact solver
    assert np.max(np.abs(tails[[0, -1]])) > 1e-3


def _tail_quadrature(ref, q: np.ndarray, p: HolsteinParams, window: float) -> np.ndarray:
    """∫ over |ε| > W of the SPEC §3 integrand (lx, ly), by adaptive quadrature."""
    from scipy.integrate import quad_vec

    res = ref.reservoirs(p)
    h_eff = ref.hamiltonian(q, p) - 1j * np.diag(sum(g for g, _ in res))
    eye = np.eye(p.n_sites)

    def integrand(e: float) -> np.ndarray:
        g_r = np.linalg.solve(e * eye - h_eff, eye)
        weight = sum(2.0 * g * ref.fermi(e, mu, p.temperature) for g, mu in res)
        return (np.abs(g_r) ** 2) @ weight / (2.0 * np.pi)

    kw = dict(epsabs=1e-13, epsrel=0.0, norm="max")
    tails = quad_vec(integrand, -np.inf, -window, **kw)[0] + quad_vec(integrand, window, np.inf, **kw)[0]
    return tails.reshape(p.shape)
