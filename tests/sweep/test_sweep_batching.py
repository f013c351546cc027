"""Batched replicas (one force call [R, lx, ly] per step) are bit-for-bit the ``neqforce simulate`` run
with the same seed: ONNX Runtime gives every lattice of a batch the same float32 numbers as the lattice
alone, and the sweep repeats the float operations of :func:`brownian_dynamics` exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neqforce.client.sweep_task import SITES_PER_CALL, ChunkSpec, ForceSpec, OnnxBatchForces, run_chunk
from neqforce.models import bundled_model_path
from neqforce.physics import HolsteinParams
from neqforce.training.idealized import dynamics_like_lattices
from neqforce.trajectory import read_trajectory

from .conftest import assert_same_run, neqforce

P = HolsteinParams(lx=12, ly=10)


def test_onnx_batch_equals_single_lattices():
    """The property the batching relies on: a batch in the task's pieces gives each lattice exactly the
    floats of the lattice alone (what ``simulate``'s server computes), for both bundled models, on
    dynamics-like lattices. A model whose export checked batch invariance (metadata
    ``neqforce.batch_invariant``) is evaluated several lattices per call and gives the same floats even
    with the whole batch in one call; a model without it is evaluated one lattice per call."""
    from neqforce.models import compact_model_path
    from neqforce.server.backends.onnx import BATCH_INVARIANT_KEY

    for path in (bundled_model_path(), compact_model_path()):
        rng = np.random.default_rng(7)
        for shape in ((12, 10), (30, 28), (17, 9)):
            p = HolsteinParams(lx=shape[0], ly=shape[1])
            whole = OnnxBatchForces(str(path), sites_per_call=1 << 30, params=p, requested="onnx")
            pieces = OnnxBatchForces(str(path), params=p, requested="onnx")
            invariant = pieces._model.metadata.get(BATCH_INVARIANT_KEY) == "true"
            assert pieces._sites_per_call == (SITES_PER_CALL if invariant else 1)
            q = dynamics_like_lattices(*shape, 16, rng)
            f_batch, n_batch = whole(q)
            f_pieces, n_pieces = pieces(q)
            for i in range(len(q)):
                f1, n1 = whole(q[i:i + 1])
                assert np.array_equal(f1[0], f_pieces[i]) and np.array_equal(n1[0], n_pieces[i])
                if invariant:
                    assert np.array_equal(f1[0], f_batch[i]) and np.array_equal(n1[0], n_batch[i])


def test_batched_domain_wall_positions_equal_single():
    """ξ of a batch in one call is ξ of each lattice alone, bit for bit (walls at every position)."""
    from neqforce.physics import bulk_cdw_amplitude, domain_wall_position
    from neqforce.physics.domain_wall import domain_wall_positions
    from neqforce.physics.lattice import staggered_sign

    p = HolsteinParams()
    q0 = bulk_cdw_amplitude(p)
    rng = np.random.default_rng(3)
    amp = np.where(np.arange(p.lx)[None, :, None] < rng.integers(0, p.lx + 1, (64, 1, 1)), 0.1, 1.0)
    q = staggered_sign(p.lx, p.ly) * q0 * amp + 0.05 * rng.standard_normal((64, *p.shape))
    single = [domain_wall_position(x, p, q0) for x in q]
    assert len(set(single)) > 10
    assert domain_wall_positions(q, p, np.full(64, q0)).tolist() == single
    assert domain_wall_positions(q, p).tolist() == single


def test_batched_replicas_equal_simulate(tmp_path):
    """Four replicas on the paper's 30×28 device (inside the bundled model's domain: AUTO -> ONNX),
    advanced together and checkpointed at other steps than simulate does, equal `neqforce simulate
    --seed s` on the embedded server, step by step and frame by frame."""
    seeds = (0, 1, 2, 3)
    p = HolsteinParams()
    spec = ChunkSpec(key="test", point="base", params=p, seeds=seeds,
                     paths=tuple(str(tmp_path / f"s{s}.h5") for s in seeds), n_steps=40,
                     forces=ForceSpec(kind="onnx", model=str(bundled_model_path())), save_every=5,
                     checkpoint_every=7)
    result = run_chunk(spec)
    assert all(r.complete for r in result.runs) and result.new_steps == 4 * 41
    for seed in (0, 3):
        out = tmp_path / f"sim{seed}"
        r = neqforce("simulate", "--steps", "40", "--seed", str(seed), "--save-every", "5", "--out", str(out),
                     "--no-plots", "--no-progress")
        assert r.returncode == 0, r.stderr
        sim = read_trajectory(out / "trajectory.h5")
        assert (sim.backend, sim.model) == ("onnx", "voltage")
        assert_same_run(tmp_path / f"s{seed}.h5", out / "trajectory.h5")


def test_chunk_resumes_replicas_from_different_checkpoints(tmp_path):
    """Replicas stopped at different steps catch up one by one, then advance as one batch; the result
    equals an uninterrupted chunk."""
    seeds = (0, 1, 2)
    kw = dict(point="base", params=P, seeds=seeds, n_steps=40, save_every=4, checkpoint_every=5,
              forces=ForceSpec(kind="onnx", model=str(bundled_model_path())))
    run_chunk(ChunkSpec(key="full", paths=tuple(str(tmp_path / f"full{s}.h5") for s in seeds), **kw))
    parts = tuple(str(tmp_path / f"part{s}.h5") for s in seeds)
    for seed, stop in ((0, 10), (1, 25)):  # runs 0 and 1 stopped early, run 2 never started
        run_chunk(ChunkSpec(key="part", paths=(parts[seed],), **{**kw, "seeds": (seed,), "n_steps": stop}))
        t = read_trajectory(parts[seed])
        assert t.complete and t.checkpoint_step == stop
    from neqforce.client.simulate import Simulation

    for seed in (0, 1):  # extend the planned length, as a resumed sweep with more steps would
        sim = Simulation.open(parts[seed], n_steps=40)
        sim.writer.checkpoint(complete=False)
    result = run_chunk(ChunkSpec(key="rest", paths=parts, **kw))
    assert result.new_steps == (40 - 10) + (40 - 25) + 41
    for seed in seeds:
        assert_same_run(tmp_path / f"full{seed}.h5", tmp_path / f"part{seed}.h5")


def test_negf_chunk_is_the_dataset_dynamics(tmp_path):
    """An exact-NEGF chunk on 8×6 equals NEGF-BD computed the way the dataset generator does."""
    from threadpoolctl import threadpool_limits

    from neqforce.training.dataset import RunSpec, run_negf_bd

    p = HolsteinParams(lx=8, ly=6)
    run_chunk(ChunkSpec(key="n", point="base", params=p, seeds=(5,), paths=(str(tmp_path / "c.h5"),),
                        n_steps=25, save_every=1, forces=ForceSpec(kind="negf")))
    with threadpool_limits(1):
        run_negf_bd(tmp_path / "d.h5", p, RunSpec(p.voltage, 5, 25), dt=0.1, save_every=1,
                    checkpoint_every=10)
    a, b = read_trajectory(tmp_path / "c.h5"), read_trajectory(tmp_path / "d.h5")
    assert a.series_xi == b.series_xi
    assert np.array_equal(a.frames()["q"], b.frames()["q"])
    assert np.array_equal(a.frames()["force"], b.frames()["force"])


def test_onnx_sweep_run_equals_simulate_on_a_server(tmp_path):
    """End to end on 12×10: `neqforce sweep --backend onnx` (one batched task of 3 replicas on the
    embedded cluster) writes the run `neqforce simulate --backend onnx --seed 2` writes against a real
    server running ONNX Runtime with one intra-op thread.

    (With several threads and a single lattice this small, ONNX Runtime splits its matrix products
    differently and the float32 forces move by 1 ulp; batches, and one thread, never do. The 30×28
    test above holds with the embedded server's default threads.)"""
    from neqforce.server.app import ServerConfig, start_server

    out = tmp_path / "sweep"
    r = neqforce("sweep", "--out", str(out), "--lx", "12", "--ly", "10", "--voltage", "3.0", "--seeds", "3",
                 "--steps", "40", "--save-every", "5", "--backend", "onnx", "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 task(s) (3 runs still to do)" in r.stdout and "OUTSIDE_DOMAIN" in r.stdout
    run = out / "runs" / "base" / "seed2" / "trajectory.h5"
    assert read_trajectory(run).extra["segments"][-1]["replicas_in_batch"] == 3
    server = start_server(ServerConfig(port=0, intra_op_threads=1, negf_pool="thread", grace_s=1.0))
    try:
        sim = tmp_path / "sim"
        r = neqforce("simulate", "--lx", "12", "--ly", "10", "--steps", "40", "--seed", "2", "--save-every",
                     "5", "--out", str(sim), "--no-plots", "--no-progress", "--backend", "onnx",
                     "--server", server.address)
    finally:
        server.stop(grace=1.0)
    assert r.returncode == 0, r.stderr
    assert_same_run(run, sim / "trajectory.h5")


def test_checkpoint_waits_for_a_reader_holding_the_file(tmp_path):
    """A reader holding a run file open (h5py's default HDF5 file lock, e.g. someone inspecting it while
    the sweep runs) does not fail the task's in-place checkpoints (the writer takes no lock)."""
    import subprocess
    import sys

    from neqforce.client.simulate import Simulation

    path = tmp_path / "run.h5"
    kw = dict(key="lock", point="base", params=P, seeds=(1,), paths=(str(path),), save_every=2,
              checkpoint_every=2, forces=ForceSpec(kind="onnx", model=str(bundled_model_path())))
    run_chunk(ChunkSpec(n_steps=4, **kw))
    sim = Simulation.open(path, n_steps=30)
    sim.writer.checkpoint(complete=False)
    OnnxBatchForces(str(bundled_model_path()))  # loaded (cached) before the reader holds the file
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time, h5py\n"
                               "f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); time.sleep(3)",
                               str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        result = run_chunk(ChunkSpec(n_steps=30, **kw))
    finally:
        reader.wait(timeout=30)
    assert result.runs[0].complete and read_trajectory(path).checkpoint_step == 30


def test_an_unreadable_run_file_is_kept_aside_and_the_run_redone(tmp_path):
    """A file a killed writer left unreadable: the retried task keeps it aside and recomputes the run,
    which is deterministic: the same run as an undisturbed one."""
    kw = dict(point="base", params=P, seeds=(4,), n_steps=20, save_every=2,
              forces=ForceSpec(kind="onnx", model=str(bundled_model_path())))
    run_chunk(ChunkSpec(key="ref", paths=(str(tmp_path / "ref.h5"),), **kw))
    damaged = tmp_path / "run" / "trajectory.h5"
    damaged.parent.mkdir()
    damaged.write_bytes((tmp_path / "ref.h5").read_bytes()[:3000])  # truncated mid-write
    result = run_chunk(ChunkSpec(key="retry", paths=(str(damaged),), **kw))
    assert result.runs[0].complete
    assert_same_run(tmp_path / "ref.h5", damaged)
    assert len(list(damaged.parent.glob("trajectory.h5.damaged-*"))) == 1
    assert "unreadable" in read_trajectory(damaged).extra["restarted"]


def test_sweep_through_a_shared_server_equals_in_worker_forces(tmp_path):
    """--server: every task sends its batch to one real force server (routes asked of the server with
    a probe per point); the runs equal those computed with the model inside the workers."""
    from neqforce.server.app import ServerConfig, start_server

    common = ["sweep", "--lx", "12", "--ly", "10", "--voltage", "3.0", "--seeds", "2", "--steps", "30",
              "--save-every", "5", "--backend", "onnx", "--no-progress"]
    server = start_server(ServerConfig(port=0, negf_pool="thread", grace_s=1.0))
    try:
        r = neqforce(*common, "--out", str(tmp_path / "remote"), "--server", server.address)
    finally:
        server.stop(grace=1.0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "base parameters: onnx (voltage): OUTSIDE_DOMAIN" in r.stdout
    local = neqforce(*common, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stdout + local.stderr
    for seed in (0, 1):
        remote = tmp_path / "remote" / "runs" / "base" / f"seed{seed}" / "trajectory.h5"
        assert read_trajectory(remote).extra["segments"][-1]["server"] == server.address
        assert_same_run(tmp_path / "local" / "runs" / "base" / f"seed{seed}" / "trajectory.h5", remote)


def test_one_model_session_per_process():
    """The sweep plans with the session its in-process tasks then compute with (no second load)."""
    from pathlib import Path

    from neqforce.client.sweep import SweepOptions, _local_models
    from neqforce.client.sweep_task import onnx_model

    path = str(bundled_model_path())
    planned = next(iter(_local_models(SweepOptions(out=Path("unused"))).values()))
    assert planned is onnx_model(path) is OnnxBatchForces(path, params=HolsteinParams())._model


def test_checkpoint_cadence_is_simulates():
    """Due at multiples of `every` unless the last checkpoint cost over 10 % of the time since; always due
    after `seconds`."""
    import time

    from neqforce.client.sweep_task import Cadence

    c = Cadence(every=5, seconds=60.0)
    assert c.due(5) and not c.due(7)
    c.cost = 1e6  # a checkpoint that took longer than the run so far: the next step-based one is skipped
    assert not c.due(10)
    c.last = time.monotonic() - 61.0
    assert c.due(7)
    c.written(time.monotonic() - 0.5)
    assert 0.4 < c.cost < 60.0 and not c.due(7)


def test_auto_high_spread_falls_back_to_negf_like_simulate(tmp_path):
    """AUTO in a sweep task follows the server's spread policy: a lattice whose committee spread exceeds
    the threshold is recomputed with exact NEGF in the worker (recorded as an NEGF answer), and the run
    follows `neqforce simulate` (embedded server, AUTO) with the same model bit for bit: the same backend at
    every step, and the same numbers (the fallback solves with the embedded server's BLAS thread count,
    `blas_threads`; LAPACK's results depend on it at ~1e-12)."""
    onnx = pytest.importorskip("onnx")
    p = HolsteinParams()
    # the threshold: the median of the bundled model's own spreads on these steps (a fixed number would
    # depend on the model: some steps must lie above it and some below)
    probe = ChunkSpec(key="t", point="base", params=p, seeds=(0,), paths=(str(tmp_path / "probe.h5"),),
                      n_steps=6, save_every=1, checkpoint_every=3,
                      forces=ForceSpec(kind="onnx", model=str(bundled_model_path()), backend="onnx"))
    assert run_chunk(probe).runs[0].complete
    threshold = float(np.median(read_trajectory(tmp_path / "probe.h5").spread_series()[1]))
    model = onnx.load(str(bundled_model_path()))
    for entry in model.metadata_props:
        if entry.key == "neqforce.committee":
            entry.value = json.dumps({**json.loads(entry.value), "spread_threshold": threshold})
    patched = tmp_path / "lowthreshold.onnx"
    onnx.save(model, str(patched))
    spec = ChunkSpec(key="t", point="base", params=p, seeds=(0,), paths=(str(tmp_path / "s0.h5"),),
                     n_steps=6, forces=ForceSpec(kind="onnx", model=str(patched), backend="auto"),
                     save_every=1, checkpoint_every=3)
    assert run_chunk(spec).runs[0].complete
    sweep = read_trajectory(tmp_path / "s0.h5")
    _, spread = sweep.spread_series()
    assert (spread == 0).any() and (spread > 0).any()  # some steps on NEGF (spread 0), some on the model
    assert "spread->NEGF" in json.dumps(sweep.extra["answers"])
    out = tmp_path / "sim"
    r = neqforce("simulate", "--steps", "6", "--seed", "0", "--save-every", "1", "--model", str(patched),
                 "--out", str(out), "--no-plots", "--no-progress")
    assert r.returncode == 0, r.stderr
    sim = read_trajectory(out / "trajectory.h5")
    assert np.array_equal(sim.spread_series()[1], spread)  # the same answers (0: NEGF) at every step
    a, b = sweep.frames(), sim.frames()
    for key in ("q", "force", "density"):
        np.testing.assert_array_equal(a[key], b[key])
    assert sweep.series_xi == sim.series_xi

