"""``neqforce sweep`` on real Dask clusters: the embedded LocalCluster, and a ``dask scheduler`` with two
``dask worker`` processes started here on 127.0.0.1. The sweep (12×10, V = 2.5 and 3.0, 3 seeds; the
bundled model covers 30-80 columns by 28, so AUTO routes both points to exact NEGF) must give bit-for-bit the
same runs everywhere: on another cluster, after a worker is killed mid-sweep, and after Ctrl-C and a
rerun of the same command."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from neqforce.models import bundled_model_path
from neqforce.physics.domain_wall import run_metrics
from neqforce.trajectory import read_trajectory

from .conftest import SWEEP_ARGS, assert_same_sweep, neqforce, neqforce_exe, run_files, wait_for_progress

STEPS = "60"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The sweep on the embedded LocalCluster (2 worker processes), undisturbed."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    r = neqforce("sweep", "--out", str(out), *SWEEP_ARGS, "--steps", STEPS, "--workers", "2", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_embedded_sweep_outputs(reference):
    out, r = reference
    assert "embedded Dask LocalCluster (2 worker processes" in r.stdout
    assert "dashboard http://127.0.0.1:" in r.stdout  # served on loopback: the link says so
    lx_lo, lx_hi = json.loads(bundled_model_path().with_suffix(".json").read_text())["domain"]["ranges"]["lx"]
    for v in ("2.5", "3"):
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(f"voltage = {v}:"))
        assert "no loaded model covers the parameters" in line and "AUTO routes it to exact NEGF" in line
        assert f"lx=12 outside [{lx_lo}, {lx_hi}]" in line and "projected backend negf" in line
    files = run_files(out)
    assert sorted(files) == [f"voltage={v}/seed{s}" for v in ("2.5", "3") for s in range(3)]
    for f in files.values():
        t = read_trajectory(f)
        assert t.complete and t.series_step == list(range(int(STEPS) + 1))
        assert (t.backend, t.model) == ("negf", "negf-exact")
        assert (f.parent / "xi.csv").exists()
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["format"] == "neqforce.sweep/1" and manifest["runs_complete"] == 6
    assert manifest["request"]["grid"] == {"lx": [12], "ly": [10], "voltage": [2.5, 3.0]}
    assert [p["backend"] for p in manifest["points"]] == ["negf", "negf"]
    assert "neqforce" in manifest["versions"]
    for name in ("summary.csv", "phase_diagram.png", "xi_families.png"):
        assert (out / name).stat().st_size > 0


def test_summary_rows_match_library_metrics(reference):
    out, _ = reference
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = [r for r in rows if r["kind"] == "run"]
    points = [r for r in rows if r["kind"] == "point"]
    assert len(runs) == 6 and len(points) == 2
    files = run_files(out)
    for row in runs:
        traj = read_trajectory(files[f"{row['point']}/seed{row['seed']}"])
        m = run_metrics(*traj.xi_series(), traj.params.lx)
        for col, value in (("t_nuc", m.t_nuc), ("wall_speed", m.speed), ("t_xi50", m.t_xi50),
                           ("final_xi", m.final_xi)):
            assert (row[col] == "" and not np.isfinite(value)) or float(row[col]) == value, col
        assert row["speed_window"] == "0.2-0.8" and row["backend"] == traj.backend
    for point in points:
        finals = [float(r["final_xi"]) for r in runs if r["point"] == point["point"]]
        assert float(point["final_xi"]) == pytest.approx(np.mean(finals))
        assert float(point["final_xi_sem"]) == pytest.approx(np.std(finals, ddof=1) / np.sqrt(3))
        assert int(point["n_runs"]) == 3


def test_rerun_of_a_finished_sweep_computes_nothing(reference):
    out, _ = reference
    before = {k: f.stat().st_mtime_ns for k, f in run_files(out).items()}
    r = neqforce("sweep", "--out", str(out), *SWEEP_ARGS, "--steps", STEPS, timeout=120)
    assert r.returncode == 0 and "every run is complete" in r.stdout, r.stderr
    assert "LocalCluster" not in r.stdout
    assert {k: f.stat().st_mtime_ns for k, f in run_files(out).items()} == before
    other = neqforce("sweep", "--out", str(out), *SWEEP_ARGS, "--steps", "50", timeout=120)
    assert other.returncode == 2 and "holds a different sweep (differs in: steps)" in other.stderr


def test_external_cluster_equals_embedded_and_survives_a_killed_worker(reference, dask_cluster, tmp_path):
    """The same sweep on `dask scheduler` + 2 `dask worker` processes, one of them SIGKILLed once
    the runs are under way: the sweep finishes, every run is complete and bit-for-bit the reference."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen([neqforce_exe(), "sweep", "--out", str(out), *SWEEP_ARGS, "--steps", STEPS,
                             "--scheduler", dask_cluster.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(out, 15, proc)
        dask_cluster.kill_worker(0)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    assert f"Dask scheduler {dask_cluster.address}" in stdout
    assert dask_cluster.workers[0].poll() is not None and dask_cluster.workers[1].poll() is None
    assert_same_sweep(reference[0], out)
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["runs_complete"] == manifest["runs_total"] == 6


def test_sigint_then_rerun_is_bit_for_bit(reference, tmp_path):
    out = tmp_path / "sweep"
    cmd = [neqforce_exe(), "sweep", "--out", str(out), *SWEEP_ARGS, "--steps", STEPS, "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(out, 15, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert "Continue with:" in stderr and f"neqforce sweep --out {out}" in stderr
    assert "Traceback" not in stderr
    partial = [read_trajectory(f) for f in run_files(out).values()]  # every file readable
    assert partial and not all(t.complete for t in partial)
    assert not list((out / "runs").glob("*/*/*.tmp"))
    resume = stderr.split("Continue with:")[1].strip().split()
    assert resume[:2] == ["neqforce", "sweep"]
    r = subprocess.run([neqforce_exe(), *resume[1:]], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_sweep(reference[0], out)
