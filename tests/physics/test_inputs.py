"""Bad inputs fail early with a ValueError that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from neqforce.physics import (
    HolsteinParams,
    brownian_dynamics,
    domain_wall_position,
    elastic_energy,
    electron_density,
    electron_density_riemann,
    forces,
    negf_forces,
)

P = HolsteinParams(lx=4, ly=3, voltage=3.0)
DENSITY_FUNCTIONS = [electron_density, electron_density_riemann, elastic_energy,
                     lambda q, p: negf_forces(q, p)]


@pytest.mark.parametrize("func", DENSITY_FUNCTIONS)
@pytest.mark.parametrize("shape", [(3, 4), (4,), (4, 3, 1), (12,), (1, 4, 3)])
def test_wrong_shape(func, shape):
    with pytest.raises(ValueError, match=r"shape .* expected \(lx, ly\) = \(4, 3\)"):
        func(np.zeros(shape), P)


@pytest.mark.parametrize("func", DENSITY_FUNCTIONS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_q_names_the_site(func, bad):
    q = np.zeros(P.shape)
    q[2, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf .*x=2, y=1"):
        func(q, P)


@pytest.mark.parametrize("q", [np.zeros((4, 3), dtype=complex), np.full((4, 3), "a"),
                               np.array([[None] * 3] * 4)])
def test_non_real_q(q):
    with pytest.raises(ValueError, match="q must be"):
        electron_density(q, P)


def test_forces_checks_the_density_too():
    q = np.zeros(P.shape)
    with pytest.raises(ValueError, match="density has shape"):
        forces(q, P, np.zeros((4, 4)))
    bad = np.full(P.shape, 0.5)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="density contains NaN"):
        forces(q, P, bad)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown NEGF method 'lu'"):
        electron_density(np.zeros(P.shape), P, method="lu")


@pytest.mark.parametrize("build", [
    lambda: HolsteinParams.from_dict({"lx": 4, "ly": 3, "Gamma": 1.0}),
    lambda: P.replace(voltge=2.0),
    lambda: HolsteinParams.from_json('{"lx": 4, "mu": 0.0}'),
])
def test_unknown_parameter_is_named(build):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\): (Gamma|voltge|mu)"):
        build()


@pytest.mark.parametrize(("changes", "message"), [
    ({"lx": 0}, "lx must be >= 1"),
    ({"ly": 2.5}, "ly must be an integer"),
    ({"gamma_bath": 0.0}, "gamma_bath .* must be > 0"),
    ({"gamma_lead": -1.0}, "gamma_lead .* must be > 0"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"k": 0.0}, "k .* must be > 0"),
    ({"voltage": float("nan")}, "voltage must be finite"),
    ({"g": "1.5"}, "g must be a real number"),
    ({"t": True}, "t must be a real number"),
])
def test_invalid_parameter_values(changes, message):
    with pytest.raises(ValueError, match=message):
        P.replace(**changes)


def test_params_round_trip():
    p = HolsteinParams(lx=7, ly=5, voltage=2.5, temperature=0.0)
    assert HolsteinParams.from_json(p.to_json()) == p
    assert HolsteinParams.from_dict(p.to_dict()) == p
    assert set(p.physical()) == set(p.to_dict()) - {"lx", "ly"}


def test_domain_wall_position_checks_shape():
    with pytest.raises(ValueError, match="shape"):
        domain_wall_position(np.zeros((3, 3)), P)


def test_brownian_dynamics_arguments():
    q0 = np.zeros(P.shape)

    def field(q):
        return np.zeros_like(q), None

    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        next(brownian_dynamics(q0, field, n_steps=-1))
    with pytest.raises(ValueError, match="dt must be > 0"):
        next(brownian_dynamics(q0, field, n_steps=1, dt=0.0))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        next(brownian_dynamics(q0, field, n_steps=1, temperature=-1.0))
    q_nan = q0.copy()
    q_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        next(brownian_dynamics(q_nan, field, n_steps=1))
    with pytest.raises(FloatingPointError, match="non-finite force at step 0"):
        next(brownian_dynamics(q0, lambda q: (np.full_like(q, np.inf), None), n_steps=1))
