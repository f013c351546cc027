"""ONNX export (SPEC §9): ORT == torch on dynamic shapes, metadata, symmetry of the exported graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from neqforce.training import descriptors as D  # noqa: E402
from neqforce.training.export import export_onnx, read_metadata  # noqa: E402


@pytest.fixture
def exported(tmp_path, random_model):
    model = random_model("device", hidden=(32, 16))
    meta = {"neqforce.params": json.dumps({"voltage": 3.0}), "neqforce.descriptor": D.DEVICE_DESCRIPTOR,
            "neqforce.metrics": "{}", "neqforce.dataset_sha256": "0" * 64, "neqforce.version": "test"}
    path, err = export_onnx(model, tmp_path / "m.onnx", meta)
    return model, path, err


def test_onnx_matches_torch_on_dynamic_shapes(exported, cdw_like):
    model, path, err = exported
    assert err <= 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    assert names == (["q"], ["force", "density"])
    assert all(isinstance(d, str) for d in sess.get_inputs()[0].shape)  # batch, lx, ly all symbolic
    for shape in [(1, 8, 6), (3, 13, 10), (2, 30, 28), (1, 6, 1)]:
        q = cdw_like(shape, seed=sum(shape)).astype(np.float32)
        f, n = sess.run(["force", "density"], {"q": q})
        with torch.no_grad():
            tf, tn = model(torch.from_numpy(q))
        assert f.shape == shape and f.dtype == np.float32
        np.testing.assert_allclose(f, tf.numpy(), atol=1e-5)
        np.testing.assert_allclose(n, tn.numpy(), atol=1e-5)


def test_onnx_graph_is_mirror_and_translation_equivariant(exported, cdw_like):
    _, path, _ = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = cdw_like((1, 16, 12), seed=9).astype(np.float32)[0]
    f = sess.run(["force"], {"q": q[None]})[0][0]
    fm = sess.run(["force"], {"q": D.mirror_about(q, 5)[None]})[0][0]
    np.testing.assert_allclose(fm, D.mirror_about(f, 5), atol=1e-5)
    fs = sess.run(["force"], {"q": np.roll(q, 5, axis=1)[None]})[0][0]
    np.testing.assert_allclose(fs, np.roll(f, 5, axis=1), atol=1e-5)


def test_metadata_present(exported):
    _, path, _ = exported
    meta = read_metadata(path)
    for key in ("neqforce.params", "neqforce.descriptor", "neqforce.metrics", "neqforce.dataset_sha256",
                "neqforce.version"):
        assert key in meta
    assert json.loads(meta["neqforce.params"]) == {"voltage": 3.0}


def test_export_check_detects_a_wrong_graph(tmp_path, random_model, monkeypatch):
    """The ORT-vs-torch check is real: a graph that differs from the torch model is refused."""
    from neqforce.training import export as E

    model = random_model("device", hidden=(8,))
    other = random_model("device", hidden=(8,), seed=1)
    path, _ = export_onnx(other, tmp_path / "other.onnx", check=False)
    with pytest.raises(ValueError, match="ONNX check failed"):
        E.check_onnx(path, model)


def test_ensemble_export_is_the_mean_of_its_members(tmp_path, random_model, cdw_like):
    from neqforce.physics import HolsteinParams
    from neqforce.training.model import EnsembleForceModel, ModelConfig, build_model

    a = random_model("paper+elec", hidden=(16, 8), seed=1)
    b = random_model("device", hidden=(8,), seed=2, anti_rank=3)
    c = build_model(ModelConfig(descriptor="paper+elec", hidden=(8,), r_cut=8), HolsteinParams().physical())
    ens = EnsembleForceModel([a, b, c.eval()])
    path, err = export_onnx(ens, tmp_path / "ens.onnx")
    assert err <= 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = cdw_like((2, 11, 9), seed=3).astype(np.float32)
    f = sess.run(["force"], {"q": q})[0]
    with torch.no_grad():
        x = torch.from_numpy(q)
        mean_el = (a.electronic(x) + b.electronic(x) + c.electronic(x)) / 3
        expected = (mean_el + a.elastic(x)).numpy()
    np.testing.assert_allclose(f, expected, atol=1e-5)
