"""Trajectory selection for the voltage-range model: voltage ranges, several lattices, unique ids."""

from __future__ import annotations

import pytest

from neqforce.physics import HolsteinParams
from neqforce.training.data import qualify_ids, select_voltage, traj_id, voltages_of
from neqforce.trajectory import Trajectory


def _traj(lx: int, v: float, seed: int, file: str, **other) -> Trajectory:
    return Trajectory(params=HolsteinParams(lx=lx, ly=6, voltage=v, **other), seed=seed, dt=0.1, save_every=1,
                      n_steps=10, backend="negf", model="exact-negf", q0_bulk=2.39, extra={"file": file})


def test_voltage_selection_one_range_or_all():
    trajs = [_traj(8, v, 0, f"d/V{v:.3f}_s0.h5") for v in (2.0, 2.5, 3.0, 4.0)]
    assert voltages_of(select_voltage(trajs, 3.0)) == [3.0]
    assert voltages_of(select_voltage(trajs, None, (2.5, 3.0))) == [2.5, 3.0]
    assert voltages_of(select_voltage(trajs, None)) == [2.0, 2.5, 3.0, 4.0]
    with pytest.raises(ValueError, match="no trajectory at voltages 4.5..5"):
        select_voltage(trajs, None, (4.5, 5.0))
    with pytest.raises(ValueError, match="empty voltage range"):
        select_voltage(trajs, None, (3.0, 2.0))
    with pytest.raises(ValueError, match="other than the voltage"):
        select_voltage([*trajs, _traj(8, 3.0, 1, "d/x.h5", g=2.0)], None)


def test_ids_are_qualified_by_lattice_and_sweep_layout_is_named_by_point():
    a, b = _traj(8, 3.0, 0, "d8/V3.000_s0.h5"), _traj(10, 3.0, 0, "d10/V3.000_s0.h5")
    assert traj_id(a) == "V3.000_s0"
    assert [traj_id(t) for t in qualify_ids([a, b])] == ["8x6/V3.000_s0", "10x6/V3.000_s0"]
    sweep = [_traj(8, v, 0, f"runs/voltage={v:g}/seed0/trajectory.h5") for v in (2.5, 3.5)]
    assert [traj_id(t) for t in qualify_ids(sweep)] == ["voltage=2.5/seed0", "voltage=3.5/seed0"]
    with pytest.raises(ValueError, match="several trajectories named V3.000_s0"):
        qualify_ids([_traj(8, 3.0, 0, "x/V3.000_s0.h5"), _traj(8, 3.0, 0, "y/V3.000_s0.h5")])
