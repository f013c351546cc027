"""NEGF-BD dataset generation (:mod:`neqforce.training.dataset`): completeness, resumption, no rework.

Real NEGF on 8×6 lattices, real worker processes. Bit-for-bit comparisons are made between runs
computed the same way (worker processes, or in-process under ``threadpool_limits(1)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import neqforce.training.dataset as dataset
from neqforce.physics import (
    HolsteinParams,
    cdw_ground_state,
    domain_wall_position,
    forces,
    negf_forces,
    step_noise,
)
from neqforce.training.dataset import (
    DatasetSpec,
    RunSpec,
    dataset_sha256,
    generate_dataset,
    load_dataset,
    preset_spec,
    run_negf_bd,
)
from neqforce.trajectory import read_trajectory

SMALL = HolsteinParams(lx=8, ly=6)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_run(a: Path, b: Path) -> None:
    """Two trajectory files hold bit-for-bit the same run (ξ series, frames, checkpoint)."""
    ta, tb = read_trajectory(a), read_trajectory(b)
    assert ta.complete and tb.complete
    assert ta.series_step == tb.series_step and ta.series_xi == tb.series_xi
    fa, fb = ta.frames(), tb.frames()
    for key in ("step", "q", "force", "density"):
        assert np.array_equal(fa[key], fb[key]), key
    assert ta.checkpoint_step == tb.checkpoint_step
    assert np.array_equal(ta.checkpoint_q, tb.checkpoint_q)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "ds"
    generate_dataset(out, preset_spec("tiny"), workers=2, show_progress=False)
    return out


def test_tiny_preset_writes_complete_runs_with_metadata(tiny_dataset):
    spec = preset_spec("tiny")
    manifest = json.loads((tiny_dataset / "dataset.json").read_text())
    assert manifest["format"] == "neqforce.dataset/1" and manifest["preset"] == "tiny"
    assert HolsteinParams.from_dict(manifest["params"]) == spec.params
    assert {"neqforce", "numpy", "scipy", "h5py"} <= set(manifest["versions"])
    assert sorted(r["file"] for r in manifest["runs"]) == sorted(f"{r.name}.h5" for r in spec.runs)
    for run in spec.runs:
        traj = read_trajectory(tiny_dataset / f"{run.name}.h5")
        p = traj.params
        assert traj.complete and traj.seed == run.seed and traj.n_steps == run.n_steps
        assert p == spec.params.replace(voltage=run.voltage)
        assert traj.dt == spec.dt and traj.backend == "negf"
        assert {"neqforce", "numpy", "scipy", "h5py"} <= set(traj.versions)
        frames = traj.frames()
        n_frames = run.n_steps // spec.save_every + 1
        assert frames["q"].shape == frames["force"].shape == frames["density"].shape == (n_frames, *p.shape)
        assert traj.series_step == list(range(run.n_steps + 1))
        assert np.all(np.isfinite(frames["density"]))
        assert traj.checkpoint_step == run.n_steps
        assert np.array_equal(traj.checkpoint_q, frames["q"][-1])


def test_tiny_frames_are_an_negf_bd_trajectory(tiny_dataset):
    """Frame 0 is the relaxed CDW; F = g(n - 1/2) - kQ - kappa Σ_nn Q with the NEGF n of the frame;
    Q(s+1) = Q(s) + dt F(s) + sqrt(2 T dt) ξ(seed, s) exactly; ξ is the domain-wall position."""
    for traj in load_dataset(tiny_dataset):
        p, fr = traj.params, traj.frames()
        assert np.max(np.abs(fr["q"][0] - cdw_ground_state(p))) < 1e-9
        amplitude = np.sqrt(2 * p.temperature * traj.dt)
        for s in range(len(fr["step"]) - 1):
            expected = fr["q"][s] + traj.dt * fr["force"][s] + amplitude * step_noise(traj.seed, s, p.shape)
            assert np.array_equal(fr["q"][s + 1], expected), s
        for s in (0, len(fr["step"]) // 2, len(fr["step"]) - 1):
            f_ref, n_ref = negf_forces(fr["q"][s], p)
            assert np.max(np.abs(fr["density"][s] - n_ref)) < 1e-12
            assert np.max(np.abs(fr["force"][s] - f_ref)) < 1e-12
            assert np.array_equal(fr["force"][s], forces(fr["q"][s], p, fr["density"][s]))
        xi = [domain_wall_position(q, p, traj.q0_bulk) for q in fr["q"]]
        assert traj.series_xi == xi


def test_finished_runs_are_not_recomputed(tiny_dataset, monkeypatch):
    files = sorted(tiny_dataset.glob("*.h5"))
    before = {f: (f.stat().st_mtime_ns, _file_digest(f)) for f in files}
    sha = dataset_sha256(tiny_dataset)

    def forbidden(*args, **kwargs):
        raise AssertionError("NEGF called for a finished run")

    monkeypatch.setattr(dataset, "negf_forces", forbidden)
    monkeypatch.setattr(dataset, "cdw_ground_state", forbidden)
    spec = preset_spec("tiny")
    generate_dataset(tiny_dataset, spec, workers=2, show_progress=False)
    for run in spec.runs:
        run_negf_bd(tiny_dataset / f"{run.name}.h5", spec.params, run, spec.dt, spec.save_every,
                    spec.checkpoint_every)
    assert {f: (f.stat().st_mtime_ns, _file_digest(f)) for f in files} == before
    assert dataset_sha256(tiny_dataset) == sha


def test_dataset_folder_refuses_other_parameters(tiny_dataset):
    spec = preset_spec("tiny")
    other = DatasetSpec(params=spec.params.replace(temperature=0.2), runs=spec.runs, preset="tiny")
    with pytest.raises(ValueError, match="other parameters"):
        generate_dataset(tiny_dataset, other, workers=1, show_progress=False)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown dataset preset 'huge'"):
        preset_spec("huge")


class _Stop(Exception):
    pass


def test_run_stopped_after_k_steps_resumes_bit_for_bit(tmp_path):
    """A run interrupted after 11 new steps (last checkpoint at step 8) and resumed equals a run
    that was never interrupted; the interrupted file is a valid, incomplete trajectory."""
    run = RunSpec(voltage=3.0, seed=3, n_steps=30)
    kw = dict(params=SMALL, run=run, dt=0.1, save_every=1, checkpoint_every=4)
    with threadpool_limits(1):
        run_negf_bd(tmp_path / "full.h5", **kw)
        done = []

        def stop_after_11(n: int) -> None:
            done.append(n)
            if len(done) == 11:
                raise _Stop

        with pytest.raises(_Stop):
            run_negf_bd(tmp_path / "resumed.h5", progress=stop_after_11, **kw)
        partial = read_trajectory(tmp_path / "resumed.h5")
        assert not partial.complete and partial.checkpoint_step == 8
        assert partial.series_step == list(range(9))
        run_negf_bd(tmp_path / "resumed.h5", **kw)
    _assert_same_run(tmp_path / "full.h5", tmp_path / "resumed.h5")


_GENERATE = textwrap.dedent("""
    import sys
    from neqforce.physics import HolsteinParams
    from neqforce.training.dataset import DatasetSpec, RunSpec, generate_dataset
    runs = (RunSpec(3.0, 0, {n}), RunSpec(2.0, 1, {n}))
    spec = DatasetSpec(params=HolsteinParams(lx=8, ly=6), runs=runs, checkpoint_every=5)
    generate_dataset(sys.argv[1], spec, workers=2, show_progress=False)
""")


def _spec(n_steps: int) -> DatasetSpec:
    runs = (RunSpec(3.0, 0, n_steps), RunSpec(2.0, 1, n_steps))
    return DatasetSpec(params=SMALL, runs=runs, checkpoint_every=5)


def test_killed_generation_resumes_bit_for_bit(tmp_path):
    """SIGKILL the whole generator (parent and workers) mid-run, then generate again: the files
    equal those of an uninterrupted generation; both are computed by worker processes."""
    n_steps = 120
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _GENERATE.format(n=n_steps), str(killed)],
                            start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            steps = []
            for f in killed.glob("*.h5"):
                try:
                    steps.append(read_trajectory(f).checkpoint_step)
                except (ValueError, OSError, KeyError):
                    pass
            if steps and max(steps) >= 10:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    partial = [read_trajectory(f) for f in killed.glob("*.h5")]
    assert partial and not all(t.complete for t in partial)

    generate_dataset(killed, _spec(n_steps), workers=2, show_progress=False)
    reference = tmp_path / "reference"
    generate_dataset(reference, _spec(n_steps), workers=2, show_progress=False)
    for run in _spec(n_steps).runs:
        _assert_same_run(reference / f"{run.name}.h5", killed / f"{run.name}.h5")
    assert dataset_sha256(killed) == dataset_sha256(reference)


def _start_dask(tmp_path: Path, n_workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A real `dask scheduler` and `n_workers` single-threaded `dask worker` processes on 127.0.0.1."""
    import socket

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - lives as long as the processes
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT,
                              cwd=tmp_path)]
    procs += [subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                                "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
              for _ in range(n_workers)]
    deadline = time.monotonic() + 90
    with Client(address, timeout="30s", set_as_default=False) as client:
        while len(client.nthreads()) < n_workers:
            assert time.monotonic() < deadline, "Dask workers did not come up"
            time.sleep(0.2)
    return address, procs


def test_generation_on_an_existing_dask_cluster_equals_the_embedded_one(tiny_dataset, tmp_path):
    """`scheduler=` runs the same tasks on a `dask scheduler` + 2 `dask worker` processes: the same files."""
    address, procs = _start_dask(tmp_path, 2)
    lines: list[str] = []
    try:
        out = generate_dataset(tmp_path / "ds", preset_spec("tiny"), scheduler=address, show_progress=False,
                               echo=lines.append)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    assert any(line.startswith(f"Dask scheduler {address}: 2 worker(s)") for line in lines), lines
    for run in preset_spec("tiny").runs:
        _assert_same_run(tiny_dataset / f"{run.name}.h5", out / f"{run.name}.h5")
    assert json.loads((out / "dataset.json").read_text())["preset"] == "tiny"


def test_generate_cli_unreachable_scheduler(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("neqforce")
    r = subprocess.run([str(exe), "dataset", "generate", str(tmp_path / "ds"), "--preset", "tiny",
                        "--scheduler", f"tcp://127.0.0.1:{port}"], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
