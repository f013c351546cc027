"""The CDW order parameter, the domain-wall position ξ and the relaxed V = 0 CDW (SPEC §5).

The one slow test relaxes (or loads from the cache) the paper-size 30×28 CDW and checks that it is
stable under 100 Brownian-dynamics steps at T = 0.1 and V = 0 with exact NEGF forces.
"""

from __future__ import annotations

import numpy as np
import pytest

import neqforce.physics.ground_state as ground_state
from neqforce.physics import (
    HolsteinParams,
    brownian_dynamics,
    bulk_cdw_amplitude,
    cdw_ground_state,
    domain_wall_position,
    local_order,
    negf_forces,
)


def test_local_order_of_perfect_checkerboard_is_its_amplitude(ref):
    for shape in [(6, 4), (5, 6), (8, 1)]:
        q = ref.checkerboard(*shape, 1.7)
        assert np.allclose(local_order(q), 1.7, rtol=0, atol=1e-14)
        assert np.allclose(local_order(-q), -1.7, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(30, 28), (10, 4)])
def test_domain_wall_position_counts_metallic_columns(ref, shape):
    """Columns set to Q = 0 (metal) next to a ±q0 checkerboard: ξ = (number of such columns)/lx."""
    lx, ly = shape
    p = HolsteinParams(lx=lx, ly=ly)
    q0 = bulk_cdw_amplitude(p)
    noise = np.random.default_rng(0).normal(0.0, 0.05, shape)
    for n_metal in range(lx + 1):
        q = ref.checkerboard(lx, ly, q0) + noise
        q[:n_metal] = noise[:n_metal]
        assert domain_wall_position(q, p) == pytest.approx(n_metal / lx)
    q = ref.checkerboard(lx, ly, q0)
    q[lx // 2] = 0.0  # a metallic column inside the CDW also counts
    assert domain_wall_position(q, p) == pytest.approx(1 / lx)


@pytest.mark.parametrize("nk", [256, 65])  # even: the symmetry-reduced grid; odd: the full grid
def test_bulk_amplitude_solves_the_two_sublattice_gap_equation(ref, nk):
    """q0 (k - 4 kappa) = g (n_A - 1/2), n_A from the Lorentzian–Fermi occupation of ±sqrt(ε_k² + Δ²),
    averaged over the whole nk × nk grid here."""
    p = HolsteinParams()
    q0 = bulk_cdw_amplitude(p, nk=nk)
    kk = 2 * np.pi * (np.arange(nk) + 0.5) / nk
    eps = (-2 * p.t * (np.cos(kk)[:, None] + np.cos(kk)[None, :])).ravel()
    delta = p.g * q0
    e = np.sqrt(eps**2 + delta**2)
    # sublattice-A weight of the lower band is (1 + Δ/E)/2, of the upper band (1 - Δ/E)/2
    occ_lower = ref.lorentzian_fermi_occupation(-e, p.gamma_bath, p.temperature)
    occ_upper = ref.lorentzian_fermi_occupation(e, p.gamma_bath, p.temperature)
    n_a = np.mean(0.5 * (1 + delta / e) * occ_lower + 0.5 * (1 - delta / e) * occ_upper)
    assert q0 * (p.k - 4 * p.kappa) == pytest.approx(p.g * (n_a - 0.5), abs=1e-10)
    assert 2.3 < q0 < 2.5  # SPEC §8: ≈ 2.39


def test_ground_state_is_a_relaxed_cdw_and_cache_independent(tmp_path, monkeypatch):
    """A fresh (cold) cache relaxes the same V = 0 CDW: max |F| < 1e-8, positive at (0, 0), V ignored."""
    p = HolsteinParams(lx=12, ly=6, voltage=2.0)
    warm = cdw_ground_state(p)
    monkeypatch.setenv("NEQFORCE_CACHE", str(tmp_path))
    monkeypatch.setattr(ground_state, "_MEMORY", {})
    cold = cdw_ground_state(p.replace(voltage=0.0))
    assert list(tmp_path.glob("ground_state/*.npy"))
    assert np.max(np.abs(warm - cold)) < 1e-7
    f, _ = negf_forces(cold, p.replace(voltage=0.0))
    assert np.max(np.abs(f)) < 1e-8
    m = local_order(cold)
    assert m[0, 0] > 0 and np.all(m > 0)
    assert domain_wall_position(cold, p) == 0.0


def _cdw_summary(q: np.ndarray, n: np.ndarray, p: HolsteinParams) -> dict[str, float]:
    """Bulk (columns 10..lx-11) staggered amplitude, edge-column amplitudes and density modulation δ."""
    sign = np.where((np.arange(p.lx)[:, None] + np.arange(p.ly)[None, :]) % 2 == 0, 1.0, -1.0)
    column_q = (sign * q).mean(axis=1)
    column_delta = (2 * sign * (n - 0.5)).mean(axis=1)
    bulk = slice(10, p.lx - 10)
    return {"q0": float(column_q[bulk].mean()), "edge_left": float(column_q[0]),
            "edge_right": float(column_q[-1]), "delta": float(column_delta[bulk].mean()),
            "delta_edge": float(column_delta[0]), "m_bulk": float(np.abs(local_order(q))[bulk].mean())}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_relaxed_cdw_30x28_is_stable_under_bd():
    """SPEC §8: the relaxed 30×28 CDW (q0 ≈ 2.39, δ ≈ 0.89) survives 100 BD steps at T = 0.1, V = 0."""
    p = HolsteinParams(voltage=0.0)
    q = cdw_ground_state(p)
    f, n = negf_forces(q, p)
    assert np.max(np.abs(f)) < 1e-7
    start = _cdw_summary(q, n, p)
    print(f"\nrelaxed 30x28 CDW: {start}")
    assert start["q0"] == pytest.approx(bulk_cdw_amplitude(p), abs=1e-3)
    assert 2.3 < start["q0"] < 2.5 and 0.85 < start["delta"] < 0.93
    assert 1.1 < start["edge_left"] < 1.5
    assert start["edge_left"] == pytest.approx(start["edge_right"], abs=1e-6)
    bulk_m = []
    for state in brownian_dynamics(q, lambda x: negf_forces(x, p), n_steps=100, dt=0.1,
                                   temperature=p.temperature, seed=0):
        assert domain_wall_position(state.q, p) == 0.0, state.step
        bulk_m.append(_cdw_summary(state.q, state.density, p)["m_bulk"])
    end = _cdw_summary(state.q, state.density, p)
    print(f"after 100 BD steps: {end}")
    assert np.all(np.abs(np.array(bulk_m) / start["m_bulk"] - 1.0) < 0.05)
    assert abs(end["delta"] - start["delta"]) < 0.02


@pytest.mark.parametrize("lx", [17, 18])  # odd and even shift of the right half
def test_long_device_relaxes_from_spliced_edges_to_the_same_cdw(lx, tmp_path, monkeypatch):
    """A device longer than SPLICE_LX starts from the relaxed edges of a SPLICE_BASE-column one; it reaches
    the same fixed point (max |F| < 1e-8, equal to the relaxation from the noisy checkerboard within the
    tolerance's reach) with fewer NEGF solves."""
    monkeypatch.setenv("NEQFORCE_CACHE", str(tmp_path))
    monkeypatch.setattr(ground_state, "_MEMORY", {})
    monkeypatch.setattr(ground_state, "SPLICE_BASE", 10)
    p = HolsteinParams(lx=lx, ly=4, voltage=0.0)
    counts: dict[str, int] = {}

    def counter(name):
        return lambda solves, err: counts.__setitem__(name, solves)

    monkeypatch.setattr(ground_state, "SPLICE_LX", 10**6)
    scratch = ground_state._relax_from_checkerboard(p, 0, progress=counter("scratch"))
    monkeypatch.setattr(ground_state, "SPLICE_LX", 12)
    spliced = ground_state._relax_from_checkerboard(p, 0, progress=counter("spliced"))
    f, _ = negf_forces(spliced, p)
    assert np.max(np.abs(f)) < 1e-8
    assert np.max(np.abs(spliced - scratch)) < 1e-6
    assert local_order(spliced)[0, 0] > 0 and np.all(local_order(spliced) > 0)
    assert counts["spliced"] < counts["scratch"]


def test_spliced_guess_keeps_the_checkerboard_and_refuses_a_shorter_target():
    base = np.arange(1, 41, dtype=float).reshape(10, 4) * ground_state.staggered_sign(10, 4)
    for lx in (13, 14):
        g = ground_state.spliced_guess(base, lx)
        assert g.shape == (lx, 4)
        assert np.all(np.sign(g) == ground_state.staggered_sign(lx, 4))
        assert np.array_equal(g[:5], base[:5])
        assert np.array_equal(np.abs(g[-5:]), np.abs(base[5:]))
    with pytest.raises(ValueError, match="cannot splice"):
        ground_state.spliced_guess(base, 9)
