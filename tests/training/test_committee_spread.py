"""The committee spread (``model.local_spread``): the members' variance averaged over the site and its 8
nearest same-sublattice sites, against a brute-force reference; in the exported graph; and ``neqforce
respread``, which gives an older committee graph the same spread with its forces untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402
from neqforce.training.model import EnsembleForceModel, local_spread  # noqa: E402

from .test_global_features import voltage_model  # noqa: E402

NEIGHBOURS = [(0, 0), (1, 1), (1, -1), (-1, 1), (-1, -1), (2, 0), (-2, 0), (0, 2), (0, -2)]


def brute_force(std: np.ndarray) -> np.ndarray:
    """Site by site: sqrt of the mean of std² over the site and its same-sublattice neighbours at
    (±1, ±1), (±2, 0), (0, ±2) that lie inside the device (x open, y periodic)."""
    b, lx, ly = std.shape
    out = np.empty_like(std, dtype=np.float64)
    for n in range(b):
        for x in range(lx):
            for y in range(ly):
                vals = [std[n, x + dx, (y + dy) % ly] ** 2 for dx, dy in NEIGHBOURS if 0 <= x + dx < lx]
                out[n, x, y] = np.sqrt(np.mean(vals))
    return out


@pytest.mark.parametrize("shape", [(2, 7, 3), (1, 5, 1), (1, 12, 10), (3, 2, 4), (1, 1, 6)])
def test_local_spread_is_the_same_sublattice_mean_of_the_variance(shape):
    std = np.random.default_rng(sum(shape)).uniform(0.0, 1.0, size=shape)
    got = local_spread(torch.from_numpy(std)).numpy()
    np.testing.assert_allclose(got, brute_force(std), rtol=1e-12)


def test_local_spread_keeps_a_uniform_spread_and_the_symmetries():
    assert torch.allclose(local_spread(torch.full((2, 9, 6), 0.3, dtype=torch.float64)),
                          torch.full((2, 9, 6), 0.3, dtype=torch.float64))
    std = torch.rand(2, 11, 8, dtype=torch.float64)
    out = local_spread(std)
    assert torch.allclose(local_spread(std.flip(2)), out.flip(2))  # mirror in y
    assert torch.allclose(local_spread(std.roll(3, 2)), out.roll(3, 2))  # translation in y
    # each lattice of a batch gets exactly the floats it gets alone
    assert all(torch.equal(local_spread(std[i:i + 1])[0], out[i]) for i in range(2))
    # one sublattice's spread does not leak into the other's
    checker = torch.from_numpy(np.indices((11, 8)).sum(0) % 2 == 0)
    only_a = torch.where(checker, std[0], torch.zeros_like(std[0]))[None]
    assert torch.all(local_spread(only_a)[0][~checker] == 0)


def _committee(seed: int = 0) -> EnsembleForceModel:
    return EnsembleForceModel([voltage_model(seed), voltage_model(seed + 1)]).eval()


def test_exported_committee_outputs_the_local_spread(tmp_path, cdw_like):
    from neqforce.training.export import export_onnx

    ens = _committee()
    path, err = export_onnx(ens, tmp_path / "c.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = cdw_like((2, 14, 8), seed=4).astype(np.float32)
    v = np.array([2.5, 3.5], np.float32)
    std = sess.run(["force_std"], {"q": q, "voltage": v})[0]
    with torch.no_grad():
        members = ens.member_electronic(torch.from_numpy(q), torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(std, brute_force(members.astype(np.float64).std(0)), atol=1e-5)
    assert not np.allclose(std, members.std(0), atol=1e-3)  # not the raw per-site std


@pytest.fixture
def old_committee(tmp_path, monkeypatch):
    """A committee graph as exported before 0.5.2: force_std = the members' raw per-site std."""
    import neqforce.training.folded as folded
    import neqforce.training.model as model_mod
    from neqforce.physics import HolsteinParams
    from neqforce.training.export import COMMITTEE_KEY, export_onnx

    monkeypatch.setattr(folded, "local_spread", lambda s: s)
    monkeypatch.setattr(model_mod, "local_spread", lambda s: s)
    old = {COMMITTEE_KEY: json.dumps({"members": 2, "spread_threshold": 0.5, "target_rmse_force": 0.0518,
                                      "spread": "per-site std (ddof 0) of the members' forces"}),
           "neqforce.params": json.dumps(HolsteinParams().physical())}
    path, _ = export_onnx(_committee(), tmp_path / "old.onnx", old)
    monkeypatch.undo()
    return path


def test_respread_keeps_the_forces_and_smooths_the_spread(old_committee, tmp_path, cdw_like):
    from neqforce.server.backends.onnx import OnnxModel

    res = CliRunner().invoke(app, ["respread", str(old_committee), "--out", str(tmp_path / "new.onnx")])
    assert res.exit_code == 0, res.output
    assert "bit-for-bit" in res.output and "not calibrated" in res.output
    a = ort.InferenceSession(str(old_committee), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "new.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in b.get_outputs()] == ["force", "density", "force_std"]
    for shape in [(2, 30, 28), (1, 9, 5), (3, 17, 9)]:
        q = cdw_like(shape, seed=shape[1]).astype(np.float32)
        v = np.linspace(2.0, 4.0, shape[0]).astype(np.float32)
        fa, da, sa = a.run(None, {"q": q, "voltage": v})
        fb, db, sb = b.run(None, {"q": q, "voltage": v})
        assert np.array_equal(fa, fb) and np.array_equal(da, db)
        np.testing.assert_allclose(sb, brute_force(sa.astype(np.float64)), atol=1e-6)
    old_meta = a.get_modelmeta().custom_metadata_map
    meta = b.get_modelmeta().custom_metadata_map
    for key in ("neqforce.params", "neqforce.reference"):
        assert meta[key] == old_meta[key]
    committee = json.loads(meta["neqforce.committee"])
    assert committee["spread_threshold"] is None and "same-sublattice" in committee["spread_definition"]
    assert committee["respread_from"]["committee"]["spread_threshold"] == 0.5
    assert meta["neqforce.batch_invariant"] == "true"
    # the server loads it (integrity check against the stored reference answer passes)
    assert OnnxModel.load(tmp_path / "new.onnx", "new", threads=1).committee
    again = CliRunner().invoke(app, ["respread", str(tmp_path / "new.onnx"), "--out",
                                     str(tmp_path / "x.onnx")])
    assert again.exit_code == 2 and "already outputs the current committee spread" in again.output
    assert not (tmp_path / "x.onnx").exists()


def test_respread_bad_input_is_one_line(tmp_path):
    from neqforce.models import compact_model_path

    res = CliRunner().invoke(app, ["respread", str(compact_model_path()), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "not a committee" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["respread", str(tmp_path / "none.onnx"), "--out",
                                   str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "model file not found" in res.output
