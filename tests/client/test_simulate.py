"""Simulation loop: recording, checkpoints, interruption and bit-for-bit resume (NEGF on 8×6)."""

from __future__ import annotations

import numpy as np
import pytest

from neqforce.client.simulate import NEGFForces, Simulation, initial_cdw, simulate
from neqforce.physics import (
    HolsteinParams,
    bulk_cdw_amplitude,
    cdw_ground_state,
    domain_wall_position,
    local_order,
    negf_forces,
)
from neqforce.trajectory import read_trajectory

P = HolsteinParams(lx=8, ly=6, voltage=3.0)
N_STEPS = 24


@pytest.fixture(scope="module")
def q0() -> np.ndarray:
    return cdw_ground_state(P)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, q0):
    """An uninterrupted run."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    simulate(NEGFForces(P), P, path, q0, n_steps=N_STEPS, seed=7, save_every=5, checkpoint_every=4)
    return read_trajectory(path)


def assert_same_run(a, b) -> None:
    """Every array of two trajectories is identical (bit for bit)."""
    assert a.series_step == b.series_step
    np.testing.assert_array_equal(a.series_xi, b.series_xi)
    fa, fb = a.frames(), b.frames()
    for name in ("step", "q", "force", "density"):
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)
    assert a.checkpoint_step == b.checkpoint_step
    np.testing.assert_array_equal(a.checkpoint_q, b.checkpoint_q)
    assert a.complete and b.complete


class InterruptAfter:
    """NEGF forces that raise KeyboardInterrupt (as Ctrl-C would) on call number ``n`` + 1."""

    backend, model = "negf", "exact-negf"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, q):
        if self.calls == self.n:
            raise KeyboardInterrupt
        self.calls += 1
        return negf_forces(q, P)


def test_records_euler_maruyama_states(reference, q0):
    """Independent check of SPEC §5: Q(s+1) = Q(s) + dt F(Q(s)) + sqrt(2 T dt) ξ_s, ξ_s from SeedSequence."""
    traj = reference
    assert traj.series_step == list(range(N_STEPS + 1))
    fr = traj.frames()
    np.testing.assert_array_equal(fr["step"], np.arange(0, N_STEPS + 1, 5))
    np.testing.assert_array_equal(fr["q"][0], q0)
    q = q0.copy()
    for step in range(N_STEPS):
        f, n = negf_forces(q, P)
        if step % 5 == 0:
            k = step // 5
            np.testing.assert_allclose(fr["q"][k], q, rtol=0, atol=1e-12)
            np.testing.assert_allclose(fr["force"][k], f, rtol=0, atol=1e-12)
            np.testing.assert_allclose(fr["density"][k], n, rtol=0, atol=1e-12)
        noise = np.random.default_rng(np.random.SeedSequence([7, step])).standard_normal(P.shape)
        q = q + 0.1 * f + np.sqrt(2 * 0.1 * P.temperature) * noise
    np.testing.assert_allclose(traj.checkpoint_q, q, rtol=0, atol=1e-10)
    assert traj.series_xi[-1] == domain_wall_position(traj.checkpoint_q, P)


def test_provenance_is_recorded(reference):
    assert reference.backend == "negf" and reference.model == "exact-negf"
    assert reference.seed == 7 and reference.dt == 0.1 and reference.n_steps == N_STEPS
    assert reference.params == P
    (segment,) = reference.extra["segments"]
    assert segment["start_step"] == 0 and segment["end_step"] == N_STEPS
    assert reference.versions["neqforce"]


def test_voltage_melts_from_the_gate(tmp_path, q0):
    """Physics sanity: at V = 3 a metallic domain grows from the gate (x = 0) into the CDW."""
    traj = simulate(NEGFForces(P), P, tmp_path / "long.h5", q0, n_steps=80, seed=7, save_every=80)
    assert traj.series_xi[0] == 0.0
    assert traj.series_xi[-1] >= 0.25
    q_end = traj.frames()["q"][-1]
    order = np.abs(local_order(q_end)).mean(axis=1)  # per column
    assert order[0] < 0.5 * bulk_cdw_amplitude(P) < order[-2]


@pytest.mark.parametrize("k", [0, 1, 9, 10, 17])
def test_ctrl_c_then_resume_is_bit_for_bit(tmp_path, q0, reference, k):
    """Interrupt after k force evaluations (k steps recorded), then resume: identical file."""
    path = tmp_path / "run.h5"
    sim = Simulation.create(path, P, q0, n_steps=N_STEPS, seed=7, save_every=5)
    with pytest.raises(KeyboardInterrupt):
        sim.run(InterruptAfter(k), checkpoint_every=4)
    partial = read_trajectory(path)  # a valid file with everything done so far
    assert not partial.complete
    assert partial.checkpoint_step == k - 1
    assert partial.series_step == list(range(k))
    resumed = Simulation.open(path)
    assert resumed.last_step == k - 1
    resumed.run(NEGFForces(P), checkpoint_every=4)
    final = read_trajectory(path)
    assert_same_run(final, reference)
    assert [s["start_step"] for s in final.extra["segments"]] == [0, k]


def test_stop_at_and_extend(tmp_path, q0, reference):
    """A run stopped early, resumed to a shorter length, then extended, equals the full run."""
    path = tmp_path / "run.h5"
    sim = Simulation.create(path, P, q0, n_steps=10, seed=7, save_every=5)
    sim.run(NEGFForces(P), stop_at=4)
    assert read_trajectory(path).checkpoint_step == 4 and not read_trajectory(path).complete
    Simulation.open(path).run(NEGFForces(P))
    assert read_trajectory(path).complete
    sim = Simulation.open(path, n_steps=N_STEPS)
    assert not sim.complete
    sim.run(NEGFForces(P))
    assert_same_run(read_trajectory(path), reference)
    with pytest.raises(ValueError, match="cannot shorten"):
        Simulation.open(path, n_steps=3)


def test_refuses_to_overwrite(tmp_path, q0):
    path = tmp_path / "run.h5"
    Simulation.create(path, P, q0, n_steps=2)
    with pytest.raises(FileExistsError):
        Simulation.create(path, P, q0, n_steps=2)
    Simulation.create(path, P, q0, n_steps=3, overwrite=True)
    assert read_trajectory(path).n_steps == 3


@pytest.mark.parametrize("bad", [
    {"n_steps": -1}, {"save_every": 0}, {"dt": 0.0}, {"dt": float("nan")},
])
def test_rejects_bad_settings(tmp_path, q0, bad):
    kw = {"n_steps": 5, **bad}
    with pytest.raises(ValueError):
        Simulation.create(tmp_path / "x.h5", P, q0, **kw)
    assert not (tmp_path / "x.h5").exists()


def test_rejects_bad_initial_state(tmp_path, q0):
    bad = q0.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Simulation.create(tmp_path / "x.h5", P, bad, n_steps=5)
    with pytest.raises(ValueError, match="shape"):
        Simulation.create(tmp_path / "x.h5", P, q0[:, :4], n_steps=5)


def test_failure_keeps_steps_done(tmp_path, q0):
    """A force source that dies (server gone) leaves a resumable file with every finished step."""

    class Dies(InterruptAfter):
        def __call__(self, q):
            if self.calls == self.n:
                raise ConnectionError("server went away")
            return super().__call__(q)

    path = tmp_path / "run.h5"
    sim = Simulation.create(path, P, q0, n_steps=N_STEPS, seed=7, save_every=5)
    with pytest.raises(ConnectionError):
        sim.run(Dies(6), checkpoint_every=100)
    assert read_trajectory(path).checkpoint_step == 5


def test_initial_cdw_of_a_large_device_is_nearly_relaxed():
    """Above the NEGF relaxation limit the CDW is extended from a 30-column reference; at V = 0 it is
    (to 1e-5) the exactly relaxed state, and the NEGF forces on it nearly vanish."""
    p = HolsteinParams(lx=40, ly=6, voltage=0.0)
    q, how = initial_cdw(p, max_relax_sites=200)
    assert "30×6" in how
    ref = cdw_ground_state(p.replace(lx=30))
    np.testing.assert_allclose(q[:15], ref[:15], atol=1e-9)
    np.testing.assert_allclose(q[-15:], ref[-15:], atol=1e-9)
    np.testing.assert_allclose(np.abs(q[15:25]), np.abs(ref[15, 0]), atol=1e-9)
    assert np.max(np.abs(negf_forces(q, p)[0])) < 1e-5
    exact, how_exact = initial_cdw(p)  # 240 sites: relaxed directly
    assert "relaxed" in how_exact
    np.testing.assert_allclose(q, exact, atol=1e-5)
    wide, how_wide = initial_cdw(HolsteinParams(lx=60, ly=40), max_relax_sites=200)
    assert wide.shape == (60, 40) and "30×6" in how_wide


def test_packaged_long_devices_start_from_their_relaxed_cdw():
    """60x28 and 80x28 exceed the relaxation limit, but their exactly relaxed states ship with the
    package: the quench starts from those, not from the extended 30-column profile."""
    for lx in (60, 80):
        p = HolsteinParams(lx=lx)
        q, how = initial_cdw(p)
        assert "relaxed V = 0 CDW" in how and "built from" not in how
        np.testing.assert_array_equal(q, cdw_ground_state(p))
    _, how = initial_cdw(HolsteinParams(lx=70))
    assert "built from the relaxed 30×28" in how
