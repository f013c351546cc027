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
