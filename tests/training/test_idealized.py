"""``neqforce dataset idealized``: idealized metallic domains of long devices, labelled with exact NEGF
(real Dask worker, real NEGF)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, metallic_columns, negf_forces
from neqforce.training.idealized import RESERVED_SEED, idealized_configuration, label_idealized
from neqforce.trajectory import read_trajectory

_EXE = Path(sys.executable).with_name("neqforce")
CLI = [str(_EXE) if _EXE.exists() else (shutil.which("neqforce") or "neqforce"), "dataset", "idealized"]


def test_configurations_are_reproducible_domains_of_the_drawn_length():
    for i in range(12):
        q, v, shape = idealized_configuration(80, 28, 2026, i)
        q2, v2, _ = idealized_configuration(80, 28, 2026, i)
        assert np.array_equal(q, q2) and v == v2 and v in (2.5, 3.0, 3.5, 4.0)
        q0 = bulk_cdw_amplitude(HolsteinParams(lx=80, ly=28, voltage=v))
        count = int(np.count_nonzero(metallic_columns(q, q0)))
        # the wall row by row is W ± roughness; the column criterion (mean |m| < q0/2) sees ~W columns
        assert abs(count - shape["W"]) <= 3, (i, count, shape)
        side = slice(0, 5) if shape["side"] == "left" else slice(75, 80)
        assert np.all(q[side] < 0.5)  # metal at the drawn electrode
    assert {idealized_configuration(80, 28, 2027, i, widths=(44, 76))[2]["W"] for i in range(16)} <= set(
        range(44, 77))
    assert not np.array_equal(idealized_configuration(80, 28, 2026, 0)[0],
                              idealized_configuration(80, 28, 2027, 0)[0])


def test_reserved_seed_and_bad_lattice_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved|bench/nonlocality"):
        label_idealized(tmp_path / "x", lattices=[(30, 28, 1)], seed=RESERVED_SEED)
    for bad in (["--lattice", "30x28", "--seed", "1"], ["--lattice", "20x28x1", "--seed", "1"],
                ["--seed", str(RESERVED_SEED)], ["--lattice", "80x28x1", "--seed", "1", "--widths", "70:90"],
                ["--lattice", "80x28x1", "--seed", "1", "--widths", "44"]):
        run = subprocess.run([*CLI, str(tmp_path / "y"), *bad], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_label_writes_exact_negf_and_resumes(tmp_path):
    out = tmp_path / "ideal"
    args = [*CLI, str(out), "--lattice", "30x28x2", "--seed", "5", "--workers", "1"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("ideal_30x28_s5_i*.h5"))
    assert [f.name for f in files] == ["ideal_30x28_s5_i0.h5", "ideal_30x28_s5_i1.h5"]
    for i, f in enumerate(files):
        traj = read_trajectory(f)
        q, v, _ = idealized_configuration(30, 28, 5, i)
        fr = traj.frames()
        assert traj.params.voltage == v and np.array_equal(fr["q"][0], q)
        force, _ = negf_forces(q, traj.params)
        np.testing.assert_allclose(fr["force"][0], force, rtol=0, atol=1e-10)
    before = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and [f.stat().st_mtime_ns for f in files] == before
