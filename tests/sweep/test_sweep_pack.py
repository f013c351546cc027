"""`neqforce dataset pack/unpack` of a sweep folder: a real exact-NEGF sweep, packed and unpacked into its
layout."""

from __future__ import annotations

import json
from dataclasses import astuple

import numpy as np
import pytest

from neqforce.physics import HolsteinParams, negf_forces
from neqforce.physics.domain_wall import run_metrics
from neqforce.training.dataset_pack import pack_dataset, unpack_dataset
from neqforce.trajectory import read_trajectory

from .conftest import neqforce, run_files


def test_a_sweep_folder_packs_and_unpacks_into_its_layout(tmp_path):
    out, pack, back = tmp_path / "sweep", tmp_path / "pack", tmp_path / "back"
    r = neqforce("sweep", "--out", str(out), "--lx", "10", "--ly", "6", "--voltage", "3.5,4.0",
                 "--seeds", "2", "--first-seed", "7", "--steps", "150", "--save-every", "25",
                 "--backend", "negf", "--workers", "1", "--no-plots", "--no-progress", timeout=180)
    assert r.returncode == 0, r.stderr
    r = neqforce("dataset", "pack", str(out), str(pack))
    assert r.returncode == 0, r.stderr
    assert "packed 4 runs" in r.stdout
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["layout"] == "sweep" and manifest["skipped"] == []
    assert manifest["source"] == json.loads((out / "sweep.json").read_text())
    assert sorted(run["name"] for run in manifest["runs"]) == sorted(
        f"{p}_{s}" for p, s in (k.split("/") for k in run_files(out)))
    r = neqforce("dataset", "unpack", str(pack), str(back))
    assert r.returncode == 0, r.stderr
    assert json.loads((back / "sweep.json").read_text()) == json.loads((out / "sweep.json").read_text())
    orig, again = run_files(out), run_files(back)
    assert sorted(orig) == sorted(again) and len(orig) == 4
    moved = []
    for key, f in orig.items():
        a, b = read_trajectory(f), read_trajectory(again[key])
        assert b.complete and a.params == b.params and a.seed == b.seed
        fa, fb = a.frames(), b.frames()
        np.testing.assert_array_equal(fa["step"], fb["step"])
        np.testing.assert_allclose(fb["q"], fa["q"], atol=1e-6)
        np.testing.assert_allclose(fb["force"], fa["force"], atol=1e-6)
        # ξ = k/lx exactly as the run wrote it (float32 would put 27/30 below 0.9: t(ξ = 0.9) one column late)
        np.testing.assert_array_equal(b.xi_series()[1], a.xi_series()[1])
        np.testing.assert_equal(astuple(run_metrics(*b.xi_series(), b.params.lx)),
                                astuple(run_metrics(*a.xi_series(), a.params.lx)))
        moved.append(a.xi_series()[1].max())
        # the unpacked frame is the physics, not just the stored numbers: exact NEGF of its Q
        p = HolsteinParams.from_dict(b.params.to_dict())
        np.testing.assert_allclose(negf_forces(fb["q"][-1], p)[0], fb["force"][-1], atol=1e-5)
    assert max(moved) >= 0.3  # the checks above had metallic columns to count


def test_a_pack_whose_run_path_leaves_the_folder_is_refused(tmp_path):
    out, pack = tmp_path / "sweep", tmp_path / "pack"
    r = neqforce("sweep", "--out", str(out), "--lx", "8", "--ly", "6", "--voltage", "3.0", "--seeds", "1",
                 "--steps", "5", "--save-every", "5", "--backend", "negf", "--workers", "1", "--no-plots",
                 "--no-progress", timeout=180)
    assert r.returncode == 0, r.stderr
    pack_dataset(out, pack)
    m = json.loads((pack / "manifest.json").read_text())
    m["runs"][0]["path"] = "../../escaped/trajectory.h5"
    (pack / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="leaves the unpack folder"):
        unpack_dataset(pack, tmp_path / "back")
    assert not (tmp_path / "escaped").exists()
