"""``neqforce dataset label``: exact NEGF labels of chosen frames of existing trajectories (real Dask
workers, real NEGF)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from neqforce.physics import metallic_columns, negf_forces
from neqforce.training.label import eligible_frames
from neqforce.trajectory import read_trajectory

_EXE = Path(sys.executable).with_name("neqforce")
CLI = [str(_EXE) if _EXE.exists() else (shutil.which("neqforce") or "neqforce"), "dataset", "label"]


def _sources(tiny_dataset: str) -> list[Path]:
    return sorted(Path(tiny_dataset).glob("*.h5"))


def test_eligible_frames_thin_evenly_and_filter_by_metallic_columns(tiny_dataset):
    src = _sources(tiny_dataset)[0]
    traj = read_trajectory(src)
    steps = traj.frames()["step"]
    picked = eligible_frames(src, per_run=5)
    assert [c.step for c in picked][0] == steps[0] and picked[-1].step == steps[-1] and len(picked) == 5
    for c in eligible_frames(src, min_metallic=1, per_run=100):
        assert np.count_nonzero(metallic_columns(c.q, traj.q0_bulk)) >= 1
    assert all(c.step >= 10 for c in eligible_frames(src, min_step=10, per_run=100))


def test_label_cli_matches_negf_resumes_and_rejects_bad_input(tiny_dataset, tmp_path):
    out = tmp_path / "lab"
    srcs = [str(s) for s in _sources(tiny_dataset)]
    args = [*CLI, *srcs, "--out", str(out), "--per-run", "3", "--chunk", "2", "--workers", "1"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("*.h5"))
    assert len(files) == 2 * len(srcs) and (out / "labelled.json").exists()
    for f in files:
        lab = read_trajectory(f)
        fr = lab.frames()
        for q, force, step in zip(fr["q"], fr["force"], range(len(fr["q"])), strict=True):
            # independent: the NEGF-BD run's own force on the same frame, and a direct NEGF solve
            src = read_trajectory(Path(lab.extra["frames"][step]["run"]))
            sfr = src.frames()
            i = list(sfr["step"]).index(lab.extra["frames"][step]["step"])
            assert np.array_equal(sfr["q"][i], q)
            np.testing.assert_allclose(force, sfr["force"][i], atol=1e-12)
            np.testing.assert_allclose(force, negf_forces(q, lab.params)[0], atol=1e-12)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "labelling" not in again.stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    bad = subprocess.run([*CLI, srcs[0], "--out", str(out), "--min-metallic", "3", "--max-metallic", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "below" in bad.stderr
    missing = subprocess.run([*CLI, str(tmp_path / "nope.h5"), "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "not a trajectory file" in missing.stderr


def test_a_rerun_that_would_label_other_frames_into_existing_files_is_refused(tiny_dataset, tmp_path):
    # two sweep-style runs with the same folder name seed7: the second is named seed7_2 by argument order
    a, b = _sources(tiny_dataset)[:2]
    runs = []
    for point, src in (("voltage=3", a), ("voltage=3.5", b)):
        dst = tmp_path / "sweep" / "runs" / point / "seed7" / "trajectory.h5"
        dst.parent.mkdir(parents=True)
        shutil.copy(src, dst)
        runs.append(str(dst))
    out = tmp_path / "lab"
    common = ["--out", str(out), "--per-run", "2", "--chunk", "2", "--workers", "1"]
    first = subprocess.run([*CLI, *runs, *common], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    files = sorted(out.glob("*.h5"))
    assert [f.name for f in files] == ["seed7_2_c0.h5", "seed7_c0.h5"]
    stamp = [f.stat().st_mtime_ns for f in files]
    swapped = subprocess.run([*CLI, *runs[::-1], *common], capture_output=True, text=True, timeout=300)
    assert swapped.returncode == 2 and swapped.stderr.strip().count("\n") == 0, swapped.stderr
    assert "already holds other frames" in swapped.stderr
    assert [f.stat().st_mtime_ns for f in sorted(out.glob("*.h5"))] == stamp
    same = subprocess.run([*CLI, *runs, *common], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "labelling" not in same.stdout
