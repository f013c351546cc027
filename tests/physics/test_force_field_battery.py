"""A reusable symmetry battery for force fields (NequIP style), run here on the NEGF backend.

A force field is a callable ``(q (lx, ly), params) -> (F (lx, ly), n (lx, ly))``. Every backend in
``FORCE_FIELDS`` must pass: y-mirror and y-translation equivariance, x-mirror equivariance at V = 0
(both electrodes have the same Γ), particle-hole symmetry n(-Q; V) = 1 - n(Q; -V) on bipartite
lattices and its consequences (n = 1/2 at Q ≡ 0, V = 0; half filling of configurations mapped to
-Q by a lattice translation), and float32 input agreeing with float64 input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from neqforce.physics import HolsteinParams, electron_density, forces

ForceField = Callable[[np.ndarray, HolsteinParams], tuple[np.ndarray, np.ndarray]]


def _negf(method: str) -> ForceField:
    def field(q: np.ndarray, p: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
        n = electron_density(q, p, method=method)
        return forces(q, p, n), n

    return field


FORCE_FIELDS: dict[str, ForceField] = {
    "negf-auto": _negf("auto"),
    "negf-eigen": _negf("eigen"),
    "negf-schur": _negf("schur"),
}
#: Tolerance of exact symmetries (round-off of an N ≲ 100 dense solver).
TOL = 1e-11


@pytest.fixture(params=sorted(FORCE_FIELDS))
def field(request) -> ForceField:
    return FORCE_FIELDS[request.param]


def _random_q(p: HolsteinParams, seed: int, scale: float = 1.2) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, p.shape)


@pytest.mark.parametrize("shape", [(2, 1), (5, 1), (3, 2), (6, 2), (4, 4), (7, 6), (10, 8)])
def test_half_filling_at_particle_hole_symmetric_point(field, shape):
    """V = 0, Q ≡ 0 on a bipartite lattice (ly even or a chain): n_i = 1/2 and F_i = 0 exactly."""
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=0.0)
    f, n = field(np.zeros(p.shape), p)
    assert np.max(np.abs(n - 0.5)) <= 1e-12
    assert np.max(np.abs(f)) <= 1e-11


def test_odd_ring_breaks_particle_hole_symmetry():
    """ly = 3 is not bipartite (a triangle in y): Q ≡ 0 is not half filled site by site (SPEC §2 note)."""
    p = HolsteinParams(lx=4, ly=3, voltage=0.0)
    n = electron_density(np.zeros(p.shape), p)
    assert np.max(np.abs(n - 0.5)) > 1e-2


@pytest.mark.parametrize("shape", [(5, 1), (4, 2), (6, 4), (5, 6)])
@pytest.mark.parametrize("voltage", [0.0, 1.5, 3.0])
def test_particle_hole_symmetry(field, shape, voltage):
    """c_i -> (-1)^(x+y) c_i^†: n_i(-Q; V) = 1 - n_i(Q; -V) and F_i(-Q; V) = -F_i(Q; -V)."""
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=voltage)
    q = _random_q(p, seed=shape[0] * 10 + shape[1])
    f_minus, n_minus = field(-q, p)
    f_flip, n_flip = field(q, p.replace(voltage=-voltage))
    assert np.max(np.abs(n_minus - (1.0 - n_flip))) <= TOL
    assert np.max(np.abs(f_minus + f_flip)) <= TOL


@pytest.mark.parametrize("shape", [(5, 4), (6, 6), (3, 2)])
def test_configuration_odd_under_y_translation_is_half_filled(field, shape):
    """V = 0, Q(x, y+1) = -Q(x, y) (e.g. a distorted checkerboard): Σ_i n_i = N/2."""
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=0.0)
    a = np.random.default_rng(1).normal(2.0, 0.5, (p.lx, 1))
    q = a * np.where(np.arange(p.ly) % 2 == 0, 1.0, -1.0)[None, :]
    _, n = field(q, p)
    assert abs(float(np.sum(n)) - p.n_sites / 2) <= 1e-10
    assert np.max(np.abs(np.roll(n, 1, axis=1) - (1.0 - n))) <= TOL


@pytest.mark.parametrize("shape", [(6, 5), (6, 4), (4, 7)])
@pytest.mark.parametrize("voltage", [0.0, 2.5])
def test_y_mirror_equivariance(field, shape, voltage):
    """Mirroring y -> -y (mod ly) mirrors the densities and forces."""
    p = HolsteinParams(lx=shape[0], ly=shape[1], voltage=voltage)
    q = _random_q(p, seed=3)
    mirror = (-np.arange(p.ly)) % p.ly
    f, n = field(q, p)
    f_m, n_m = field(q[:, mirror], p)
    assert np.max(np.abs(n_m - n[:, mirror])) <= TOL
    assert np.max(np.abs(f_m - f[:, mirror])) <= TOL


@pytest.mark.parametrize("shift", [1, 2, 5])
def test_y_translation_equivariance(field, shift):
    p = HolsteinParams(lx=5, ly=7, voltage=2.5)
    q = _random_q(p, seed=4)
    f, n = field(q, p)
    f_s, n_s = field(np.roll(q, shift, axis=1), p)
    assert np.max(np.abs(n_s - np.roll(n, shift, axis=1))) <= TOL
    assert np.max(np.abs(f_s - np.roll(f, shift, axis=1))) <= TOL


def test_x_mirror_equivariance_at_zero_bias(field):
    """At V = 0 both electrodes are identical reservoirs (Γ = gamma_lead, mu = 0): x -> lx-1-x."""
    p = HolsteinParams(lx=7, ly=4, voltage=0.0)
    q = _random_q(p, seed=5)
    f, n = field(q, p)
    f_m, n_m = field(q[::-1], p)
    assert np.max(np.abs(n_m - n[::-1])) <= TOL
    assert np.max(np.abs(f_m - f[::-1])) <= TOL


def test_bias_breaks_x_mirror():
    """With V != 0 the left electrode (mu = -V) differs from the right one: the mirror fails."""
    p = HolsteinParams(lx=7, ly=4, voltage=2.5)
    q = _random_q(p, seed=5)
    n, n_m = electron_density(q, p), electron_density(q[::-1], p)
    assert np.max(np.abs(n_m - n[::-1])) > 1e-3


def test_float32_input_matches_float64(field):
    p = HolsteinParams(lx=6, ly=4, voltage=3.0)
    q64 = _random_q(p, seed=6)
    q32 = q64.astype(np.float32)
    f32, n32 = field(q32, p)
    assert n32.dtype == np.float64 and f32.dtype == np.float64
    f_rounded, n_rounded = field(q32.astype(np.float64), p)
    assert np.array_equal(n32, n_rounded) and np.array_equal(f32, f_rounded)
    f64, n64 = field(q64, p)
    assert np.max(np.abs(n32 - n64)) <= 1e-6
    assert np.max(np.abs(f32 - f64)) <= 1e-6
