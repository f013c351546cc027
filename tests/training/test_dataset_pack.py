"""`neqforce dataset pack/unpack`: compact committed copies of NEGF datasets, checked against the source."""

from __future__ import annotations

import json
import shutil

import numpy as np
from typer.testing import CliRunner

from neqforce.cli import app
from neqforce.physics import HolsteinParams, negf_forces
from neqforce.training.dataset import load_dataset
from neqforce.trajectory import read_trajectory

runner = CliRunner()


def test_pack_unpack_round_trip(tiny_dataset, tmp_path):
    pack, back = tmp_path / "pack", tmp_path / "back"
    res = runner.invoke(app, ["dataset", "pack", tiny_dataset, str(pack)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((pack / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2 and manifest["skipped"] == []
    res = runner.invoke(app, ["dataset", "unpack", str(pack), str(back)])
    assert res.exit_code == 0, res.output
    orig = {t.extra["file"].split("/")[-1]: t for t in load_dataset(tiny_dataset)}
    for t in load_dataset(back):
        o = orig[t.extra["file"].split("/")[-1]]
        assert t.complete and t.params == o.params and t.seed == o.seed and t.dt == o.dt
        a, b = t.frames(), o.frames()
        np.testing.assert_array_equal(a["step"], b["step"])
        np.testing.assert_allclose(a["q"], b["q"], rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(a["force"], b["force"], rtol=1e-6, atol=1e-6)
        # the density rebuilt from the force law equals the exact NEGF density of the stored frame
        n_exact = negf_forces(b["q"][-1], o.params)[1]
        np.testing.assert_allclose(a["density"][-1], n_exact, atol=1e-5)
        np.testing.assert_array_equal(t.xi_series()[1], o.xi_series()[1])  # ξ = k/lx restored exactly


def test_a_damaged_pack_and_incomplete_runs(tiny_dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_dataset, src)
    # an unfinished run is left out of the pack and named
    from neqforce.training.dataset import RunSpec, run_negf_bd

    class Stop(Exception):
        pass

    def stop(n, seen=[0]):  # noqa: B006 - counter across calls on purpose
        seen[0] += n
        if seen[0] >= 3:
            raise Stop

    try:
        run_negf_bd(src / "V3.000_s7.h5", HolsteinParams(lx=8, ly=6), RunSpec(3.0, 7, 30), 0.1, 1, 2,
                    progress=stop)
    except Stop:
        pass
    assert not read_trajectory(src / "V3.000_s7.h5").complete
    res = runner.invoke(app, ["dataset", "pack", str(src), str(tmp_path / "pack")])
    assert res.exit_code == 0 and "V3.000_s7" in res.output
    # one flipped value in a packed array: refused, one line
    f = next((tmp_path / "pack").glob("*.npz"))
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["force"][0, 0, 0] += 1.0
    np.savez_compressed(f, **arrays)
    res = runner.invoke(app, ["dataset", "unpack", str(tmp_path / "pack"), str(tmp_path / "back")])
    assert res.exit_code == 2 and "damaged pack" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["dataset", "unpack", str(tmp_path), str(tmp_path / "back")])
    assert res.exit_code == 2 and "not a dataset pack" in res.output


def test_repacking_an_unpacked_dataset_keeps_the_pack(tiny_dataset, tmp_path):
    """Unpack, then pack into the same folder (e.g. after completing a run): the unchanged runs keep their
    files and their float64 hash (that of the exact originals, not of the float32 copies)."""
    pack, back = tmp_path / "pack", tmp_path / "back"
    assert runner.invoke(app, ["dataset", "pack", tiny_dataset, str(pack)]).exit_code == 0
    before = (pack / "manifest.json").read_text()
    files = {f.name: f.read_bytes() for f in pack.glob("*.npz")}
    assert runner.invoke(app, ["dataset", "unpack", str(pack), str(back)]).exit_code == 0
    assert runner.invoke(app, ["dataset", "pack", str(back), str(pack)]).exit_code == 0
    assert json.loads((pack / "manifest.json").read_text())["runs"] == json.loads(before)["runs"]
    assert {f.name: f.read_bytes() for f in pack.glob("*.npz")} == files
    fresh = tmp_path / "fresh"  # into a new folder the float64 hash is that of the (float32) copies
    assert runner.invoke(app, ["dataset", "pack", str(back), str(fresh)]).exit_code == 0
    runs = json.loads((fresh / "manifest.json").read_text())["runs"]
    old = {r["name"]: r for r in json.loads(before)["runs"]}
    assert all(r["sha256_float32"] == old[r["name"]]["sha256_float32"] for r in runs)
    assert all(r["sha256_float64"] != old[r["name"]]["sha256_float64"] for r in runs)
