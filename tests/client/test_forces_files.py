"""``neqforce forces`` with hostile files: lying .npy headers, and a model that answers NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from neqforce.cli import app
from neqforce.physics import HolsteinParams

runner = CliRunner()


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def npy_with_header(path, shape, data: bytes, descr: str = "<f8"):
    """A .npy file whose header claims ``shape`` but which holds only ``data``."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(data)
    return path


@pytest.mark.parametrize("shape, data, descr, message", [
    ((100000, 100000), b"\0" * 64, "<f8", "10000000000 sites"),
    ((80, 60), b"\0" * 800, "<f8", "holds 800 bytes"),
    ((8, 6, 2), b"\0" * 768, "<f8", "2-D"),
    ((8, 6), b"\0" * 384, "|O", "real numeric"),
], ids=["huge", "truncated", "3-D", "object"])
def test_npy_header_is_checked_before_loading(tmp_path, shape, data, descr, message):
    path = npy_with_header(tmp_path / "q.npy", shape, data, descr)
    line = one_error_line(runner.invoke(app, ["forces", str(path), "--out", str(tmp_path / "f.npy"),
                                              "--server", "127.0.0.1:1"]))
    assert message in line, line
    assert not (tmp_path / "f.npy").exists()


def nan_model(path, params: HolsteinParams):
    """An ONNX model with the server's contract whose forces are infinite where q = 0.3 exactly
    (force = q / (q - 0.3)) and finite elsewhere (its warm-up passes)."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", "lx", "ly"]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("q", "force", "density")]
    consts = [helper.make_tensor("pole", TensorProto.FLOAT, [], [0.3]),
              helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
              helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    nodes = [helper.make_node("Sub", ["q", "pole"], ["shifted"]),
             helper.make_node("Div", ["q", "shifted"], ["force"]),
             helper.make_node("Mul", ["q", "zero"], ["z"]),
             helper.make_node("Add", ["z", "half"], ["density"])]
    model = helper.make_model(helper.make_graph(nodes, "nan", [io[0]], io[1:], initializer=consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"neqforce.params": json.dumps(params.physical()), "neqforce.descriptor": "none/0",
            "neqforce.metrics": "{}", "neqforce.dataset_sha256": "", "neqforce.version": "test"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_non_finite_forces_are_never_written(tmp_path):
    """Whether the server refuses the NaN answer or lets it through, the CLI writes nothing, exit != 0."""
    q = tmp_path / "q.npy"
    np.save(q, np.full((8, 6), np.float32(0.3), dtype=np.float32))
    model = nan_model(tmp_path / "nan.onnx", HolsteinParams())
    for out in ("f.npy", "f.h5"):
        result = runner.invoke(app, ["forces", str(q), "--out", str(tmp_path / out), "--model", str(model),
                                     "--backend", "onnx"])
        line = one_error_line(result)
        assert not (tmp_path / out).exists(), line
