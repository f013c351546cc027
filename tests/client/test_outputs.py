"""Output files: names, ξ(t) CSV, configurations in, forces out, figures."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from neqforce.client.outputs import (
    RunOutputs,
    load_configuration,
    read_forces,
    read_xi_csv,
    write_forces,
    write_xi_csv,
)
from neqforce.client.plots import plot_density_snapshots, plot_xi, snapshot_indices
from neqforce.client.simulate import Simulation
from neqforce.physics import HolsteinParams, domain_wall_position

P = HolsteinParams(lx=8, ly=6)


def toy_force(q):
    """A cheap deterministic force field: relaxation towards 0 (melts the CDW, ξ grows)."""
    return -0.5 * q, 0.5 + 0.1 * q


@pytest.fixture
def traj(tmp_path):
    q0 = 2.0 * (-1.0) ** np.add.outer(np.arange(8), np.arange(6))
    sim = Simulation.create(tmp_path / "t.h5", P, q0, n_steps=30, seed=1, save_every=5)
    return sim.run(toy_force)


def test_output_names(tmp_path):
    folder = RunOutputs.at(tmp_path / "runs" / "sim")
    assert folder.trajectory == tmp_path / "runs" / "sim" / "trajectory.h5"
    assert folder.xi_png.name == "xi.png" and folder.density_png.parent == folder.trajectory.parent
    stem = RunOutputs.at(tmp_path / "a.h5")
    assert [p.name for p in stem.all()] == ["a.h5", "a_xi.csv", "a_density.png", "a_xi.png"]


def test_xi_csv_roundtrip(tmp_path, traj):
    path = write_xi_csv(tmp_path / "xi.csv", traj)
    table = read_xi_csv(path)
    np.testing.assert_array_equal(table["step"], np.arange(31))
    np.testing.assert_allclose(table["time"], 0.1 * np.arange(31))
    np.testing.assert_array_equal(table["xi"], traj.series_xi)
    assert traj.series_xi[-1] == domain_wall_position(traj.checkpoint_q, P)
    assert path.read_text().splitlines()[0] == "step,time,xi,metallic_columns"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o044, oct(mode)  # readable by others like any file (not mkstemp's 0600)


def test_load_configuration_from_trajectory(traj, tmp_path):
    last = load_configuration(tmp_path / "t.h5")
    np.testing.assert_array_equal(last.q, traj.checkpoint_q)
    assert last.params == P and "step 30" in last.source
    second = load_configuration(tmp_path / "t.h5", frame=1)
    np.testing.assert_array_equal(second.q, traj.frames()["q"][1])
    np.testing.assert_array_equal(load_configuration(tmp_path / "t.h5", frame=-1).q, traj.frames()["q"][-1])
    with pytest.raises(ValueError, match="out of range"):
        load_configuration(tmp_path / "t.h5", frame=7)


@pytest.mark.parametrize("content, message", [
    (np.zeros(4), "2-D"), (np.zeros((2, 2, 2)), "2-D"), (np.array([["a"]]), "numeric"),
    (np.array([[1.0, np.nan]]), "NaN"), (np.ones((3, 3)) * 1j, "real"),
])
def test_load_configuration_rejects(tmp_path, content, message):
    np.save(tmp_path / "q.npy", content)
    with pytest.raises(ValueError, match=message):
        load_configuration(tmp_path / "q.npy")


def test_load_configuration_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_configuration(tmp_path / "missing.npy")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        load_configuration(tmp_path / "junk.h5")
    (tmp_path / "junk.npy").write_bytes(b"not npy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_configuration(tmp_path / "junk.npy")


def test_forces_file_roundtrip(tmp_path):
    q = np.arange(48.0).reshape(8, 6)
    write_forces(tmp_path / "f.h5", q, -q, None, P, backend="negf", model="m", extra={"source": "x"})
    data = read_forces(tmp_path / "f.h5")
    np.testing.assert_array_equal(data["force"], -q)
    assert np.isnan(data["density"]).all() and data["params"] == P and data["backend"] == "negf"
    conf = load_configuration(tmp_path / "f.h5")  # a forces file is also a configuration
    np.testing.assert_array_equal(conf.q, q)
    write_forces(tmp_path / "f.npy", q, -q, None, P)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), -q)
    with pytest.raises(ValueError, match="unsupported"):
        write_forces(tmp_path / "f.txt", q, -q, None, P)


def test_snapshot_indices():
    assert snapshot_indices(0) == []
    assert snapshot_indices(3) == [0, 1, 2]
    assert snapshot_indices(61) == [0, 12, 24, 36, 48, 60]


def test_figures_are_written(tmp_path, traj, monkeypatch):
    for path in (plot_density_snapshots(traj, tmp_path / "d.png"), plot_xi([traj, traj], tmp_path / "x.png",
                                                                          labels=["a", "b"])):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    import neqforce.client.plots as plots

    monkeypatch.setattr(plots, "MAX_SITE_RESOLVED", 4)  # as for a lattice too large to draw site by site
    assert plot_density_snapshots(traj, tmp_path / "big.png").exists()
    traj.frame_density = [np.full(P.shape, np.nan) for _ in traj.frame_density]  # backend without n_i
    assert plot_density_snapshots(traj, tmp_path / "m.png").exists()
