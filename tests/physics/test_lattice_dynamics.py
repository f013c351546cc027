"""Lattice energy, forces and the Brownian-dynamics integrator (SPEC §2 and §5).

References: the elastic energy summed bond by bond, central finite differences, the exact stationary
covariance of the Euler–Maruyama Ornstein–Uhlenbeck process and the continuum equipartition value.
"""

from __future__ import annotations

import numpy as np
import pytest

from neqforce.physics import (
    HolsteinParams,
    brownian_dynamics,
    elastic_energy,
    elastic_force,
    electron_density,
    forces,
    negf_forces,
)

SHAPES = [(5, 4), (4, 3), (6, 1), (3, 2), (1, 5)]


def _bond_energy(q: np.ndarray, p: HolsteinParams) -> float:
    """E_lat = k/2 Σ Q_i² + kappa Σ_bonds Q_i Q_j, bonds listed one by one (ly = 2: two y-bonds)."""
    lx, ly = q.shape
    energy = 0.5 * p.k * float(np.sum(q * q))
    for x in range(lx):
        for y in range(ly):
            if x + 1 < lx:
                energy += p.kappa * q[x, y] * q[x + 1, y]
            if ly > 1:
                energy += p.kappa * q[x, y] * q[x, (y + 1) % ly]
    return energy


@pytest.mark.parametrize("shape", SHAPES)
def test_elastic_energy_matches_bond_sum(shape):
    p = HolsteinParams(lx=shape[0], ly=shape[1], kappa=0.23, k=1.3)
    q = np.random.default_rng(1).normal(0.0, 1.0, p.shape)
    assert elastic_energy(q, p) == pytest.approx(_bond_energy(q, p), rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
def test_elastic_force_is_minus_finite_difference_gradient(shape):
    p = HolsteinParams(lx=shape[0], ly=shape[1], kappa=0.23, k=1.3)
    q = np.random.default_rng(2).normal(0.0, 1.0, p.shape)
    h = 1e-5
    grad = np.zeros(p.shape)
    for idx in np.ndindex(*p.shape):
        up, down = q.copy(), q.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (_bond_energy(up, p) - _bond_energy(down, p)) / (2 * h)
    assert np.max(np.abs(elastic_force(q, p) + grad)) <= 1e-8


def test_elastic_force_batches_like_a_loop():
    p = HolsteinParams(lx=5, ly=4)
    qs = np.random.default_rng(3).normal(size=(3, 2, 5, 4))
    batched = elastic_force(qs, p)
    assert batched.shape == qs.shape
    for idx in np.ndindex(3, 2):
        assert np.array_equal(batched[idx], elastic_force(qs[idx], p))


def test_total_force_formula(ref):
    """F_i = g (n_i - 1/2) - k Q_i - kappa Σ_nn Q_j, with the neighbour sum from the adjacency matrix."""
    p = HolsteinParams(lx=6, ly=4, voltage=2.5)
    q = np.random.default_rng(4).normal(0.0, 1.0, p.shape)
    n = electron_density(q, p)
    nn_sum = (ref.adjacency(p.lx, p.ly) @ q.ravel()).reshape(p.shape)
    expected = p.g * (n - 0.5) - p.k * q - p.kappa * nn_sum
    assert np.max(np.abs(forces(q, p, n) - expected)) <= 1e-13
    f, n2 = negf_forces(q, p)
    assert np.array_equal(n2, n) and np.max(np.abs(f - expected)) <= 1e-13


def test_zero_coupling_leaves_only_the_elastic_force():
    p = HolsteinParams(lx=5, ly=4, voltage=3.0, g=0.0)
    q = np.random.default_rng(5).normal(0.0, 1.0, p.shape)
    f, _ = negf_forces(q, p)
    assert np.max(np.abs(f - elastic_force(q, p))) <= 1e-14


def _stiffness(ref, p: HolsteinParams) -> np.ndarray:
    """K = k I + kappa A (E_lat = Q^T K Q / 2), N×N."""
    return p.k * np.eye(p.n_sites) + p.kappa * ref.adjacency(p.lx, p.ly)


def test_harmonic_bd_reaches_equipartition(ref):
    """g = 0: Q follows the discrete OU process Q' = (1 - dt K) Q + sqrt(2 T dt) ξ, whose exact
    stationary covariance is C = T (K - dt K²/2)^-1; the continuum value is T K^-1 (bias O(dt)).

    200 independent replicas are integrated at once (the integrator and the elastic force accept a
    leading batch axis); statistical errors come from the spread between replicas.
    """
    p = HolsteinParams(lx=6, ly=4, g=0.0, temperature=0.1)
    dt, n_steps, burn_in, replicas = 0.1, 1500, 300, 200
    k_mat = _stiffness(ref, p)
    c_exact = p.temperature * np.linalg.inv(k_mat - 0.5 * dt * k_mat @ k_mat)
    c_continuum = p.temperature * np.linalg.inv(k_mat)

    sum_q2 = np.zeros((replicas, p.n_sites))
    sum_qq = np.zeros((replicas, p.n_sites, p.n_sites))
    count = 0
    run = brownian_dynamics(np.zeros((replicas, *p.shape)), lambda q: (elastic_force(q, p), None),
                            n_steps=n_steps, dt=dt, temperature=p.temperature, seed=42)
    for state in run:
        if state.step < burn_in:
            continue
        flat = state.q.reshape(replicas, -1)
        sum_q2 += flat * flat
        sum_qq += flat[:, :, None] * flat[:, None, :]
        count += 1
    per_replica = sum_q2.mean(axis=1) / count                    # (replicas,) mean_i <Q_i²>
    estimate = per_replica.mean()
    stderr = per_replica.std(ddof=1) / np.sqrt(replicas)
    exact = np.trace(c_exact) / p.n_sites
    continuum = np.trace(c_continuum) / p.n_sites
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)
    # the O(dt) discretisation bias is resolved: the continuum value is many error bars away,
    # but within the bias bound dt * max eig(K) / 2
    assert abs(estimate - continuum) > 4 * stderr
    assert abs(estimate - continuum) / continuum < 0.5 * dt * np.linalg.eigvalsh(k_mat).max()
    # site-resolved variances and the nearest-neighbour anticorrelation set by kappa
    cov = (sum_qq / count).mean(axis=0)
    cov_err = (sum_qq / count).std(axis=0, ddof=1) / np.sqrt(replicas)
    assert np.all(np.abs(np.diag(cov) - np.diag(c_exact)) < 5 * np.diag(cov_err))
    bonds = ref.adjacency(p.lx, p.ly) > 0
    bond_cov = (sum_qq / count)[:, bonds].mean(axis=1)           # (replicas,) mean nn <Q_i Q_j>
    assert c_exact[bonds].mean() < -0.1 * exact
    assert abs(bond_cov.mean() - c_exact[bonds].mean()) < 4 * bond_cov.std(ddof=1) / np.sqrt(replicas)


def test_bd_is_reproducible_and_resumes_bit_for_bit():
    p = HolsteinParams(lx=6, ly=4, voltage=3.0)
    q0 = np.random.default_rng(6).normal(0.0, 1.0, p.shape)

    def field(q):
        return negf_forces(q, p)

    full = [s.q for s in brownian_dynamics(q0, field, n_steps=12, seed=9)]
    again = [s.q for s in brownian_dynamics(q0, field, n_steps=12, seed=9)]
    other = [s.q for s in brownian_dynamics(q0, field, n_steps=12, seed=10)]
    assert all(np.array_equal(a, b) for a, b in zip(full, again, strict=True))
    assert not np.array_equal(full[-1], other[-1])
    resumed = [s.q for s in brownian_dynamics(full[5], field, n_steps=7, seed=9, start_step=5)]
    assert all(np.array_equal(a, b) for a, b in zip(full[5:], resumed, strict=True))


def test_bd_step_is_euler_maruyama():
    """Q(t+dt) = Q + dt F(Q) + sqrt(2 T dt) ξ: with T = 0 one step is exactly Q + dt F."""
    p = HolsteinParams(lx=4, ly=4, voltage=3.0)
    q0 = np.random.default_rng(7).normal(0.0, 1.0, p.shape)
    states = list(brownian_dynamics(q0, lambda q: negf_forces(q, p), n_steps=2, dt=0.05, temperature=0.0))
    assert [s.step for s in states] == [0, 1, 2]
    assert np.allclose([s.time for s in states], [0.0, 0.05, 0.1])
    for a, b in zip(states, states[1:], strict=False):
        assert np.array_equal(b.q, a.q + 0.05 * a.force)
        assert np.array_equal(a.density, electron_density(a.q, p))
