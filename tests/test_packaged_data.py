"""Data shipped inside the package must be reproducible from the code."""

from __future__ import annotations

import numpy as np
import pytest

from neqforce.physics import HolsteinParams, cdw_ground_state, negf_forces
from neqforce.physics.ground_state import PACKAGED, packaged_key


def test_default_ground_state_is_packaged() -> None:
    assert (PACKAGED / f"{packaged_key(HolsteinParams())}.npy").exists()


@pytest.mark.slow
def test_packaged_ground_state_is_the_relaxed_cdw() -> None:
    """The shipped 30x28 state has vanishing NEGF forces at V = 0 and equals a fresh relaxation."""
    p = HolsteinParams(voltage=0.0)
    shipped = cdw_ground_state(p)
    assert np.abs(negf_forces(shipped, p)[0]).max() < 1e-7
    fresh = cdw_ground_state(p, use_cache=False)
    assert np.abs(fresh - shipped).max() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("lx", [60, 80, 120])
def test_packaged_long_device_ground_states_are_relaxed(lx) -> None:
    """The shipped 60x28, 80x28 and 120x28 states (relaxed from spliced edges, physics/ground_state.py) have
    vanishing NEGF forces at V = 0 and the CDW sign pattern, positive at (0, 0)."""
    from neqforce.physics import local_order

    p = HolsteinParams(lx=lx, voltage=0.0)
    assert (PACKAGED / f"{packaged_key(p)}.npy").exists()
    q = cdw_ground_state(p)
    assert q.shape == (lx, 28)
    assert np.abs(negf_forces(q, p)[0]).max() < 1e-8
    assert np.all(local_order(q) > 0)
