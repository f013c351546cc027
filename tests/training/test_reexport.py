"""``neqforce reexport``: a model written by the gather graph of package < 0.5.3 (the committed fixture,
exported by that code) rewritten with the convolution graph: the same outputs, metadata kept, and bad input
refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402

#: Written by package 0.5.2's exporter (gather graph): three members with r_c = 3, 4, 4, hidden (8, 6),
#: global inputs voltage+metal, random weights and normalization, a committee with the current spread.
LEGACY = Path(__file__).parent.parent / "fixtures" / "legacy_gather_committee.onnx"


def _run(path: Path, q: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"q": q.astype(np.float32), "voltage": v.astype(np.float32)})


def test_reexport_gives_the_legacy_models_outputs_with_convolutions(tmp_path, cdw_like):
    from neqforce.server.backends.onnx import OnnxModel

    out = tmp_path / "new.onnx"
    res = CliRunner().invoke(app, ["reexport", str(LEGACY), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "same weights and metadata" in res.output
    for shape in [(2, 30, 28), (1, 9, 5), (3, 17, 9), (1, 6, 1), (2, 40, 3)]:
        q = cdw_like(shape, seed=shape[1])
        v = np.linspace(2.0, 4.0, shape[0])
        old, new = _run(LEGACY, q, v), _run(out, q, v)
        assert [x.shape for x in new] == [shape] * 3
        for a, b in zip(old, new, strict=True):
            np.testing.assert_allclose(b, a, atol=2e-6 * max(1.0, float(np.abs(old[0]).max())))
        assert not np.array_equal(old[2], 0 * old[2])  # the spread is not trivially zero
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert "Conv" in ops and not any("w_big" in t.name for t in proto.graph.initializer)
    before = {p.key: p.value for p in onnx.load(str(LEGACY)).metadata_props}
    after = {p.key: p.value for p in proto.metadata_props}
    for key in ("neqforce.params", "neqforce.committee", "neqforce.domain", "neqforce.version",
                "neqforce.training", "neqforce.descriptor"):
        assert after[key] == before[key]
    record = json.loads(after["neqforce.reexport"])
    assert record["from_sha256"] == hashlib.sha256(LEGACY.read_bytes()).hexdigest()
    assert record["graph"] == "conv/1" and record["from_version"] == "0.5.2"
    assert after["neqforce.batch_invariant"] == "true"
    # the server loads it: the stored reference answer is the new file's own
    assert OnnxModel.load(out, "new", threads=1).committee


def test_reexport_refuses_bad_input_in_one_line(tmp_path):
    out = tmp_path / "new.onnx"
    assert CliRunner().invoke(app, ["reexport", str(LEGACY), "--out", str(out)]).exit_code == 0
    again = CliRunner().invoke(app, ["reexport", str(out), "--out", str(tmp_path / "x.onnx")])
    assert again.exit_code == 2 and "already has the current inference graph" in again.output
    missing = CliRunner().invoke(app, ["reexport", str(tmp_path / "none.onnx"), "--out",
                                       str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "model file not found" in missing.output
    # a first-layer matrix without the mirror structure (a pair's weights differ on Q_j and Q_ĵ) is refused
    proto = onnx.load(str(LEGACY))
    for t in proto.graph.initializer:
        if t.name == "members.1.w_big":
            w = onnx.numpy_helper.to_array(t).copy()
            w[0, -1] += 0.1
            t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    broken = CliRunner().invoke(app, ["reexport", str(tmp_path / "broken.onnx"), "--out",
                                      str(tmp_path / "x.onnx")])
    assert broken.exit_code == 2 and "mirror structure" in broken.output
    for res in (again, missing, broken):
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
