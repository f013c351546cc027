"""Fixtures of the client tests: a small SPEC §9 ONNX model built here, a real server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neqforce.physics import HolsteinParams

#: The test model: F = A Q, n = 1/2 + B Q (float32), a local linear "surrogate".
A, B = -0.3, 0.2


def linear_forces(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent NumPy reference of the test model, in float32 like ONNX Runtime."""
    q32 = np.asarray(q).astype(np.float32)
    force = (np.float32(A) * q32).astype(np.float64)
    density = (np.float32(B) * q32 + np.float32(0.5)).astype(np.float64)
    return force, density


def make_linear_model(path: Path, params: HolsteinParams) -> Path:
    """Write an ONNX model obeying the SPEC §9 contract (dynamic [batch, lx, ly]) for ``params``."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", "lx", "ly"]
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, dims)
    force = helper.make_tensor_value_info("force", TensorProto.FLOAT, dims)
    density = helper.make_tensor_value_info("density", TensorProto.FLOAT, dims)
    consts = [helper.make_tensor(name, TensorProto.FLOAT, [], [value])
              for name, value in (("a", A), ("b", B), ("half", 0.5))]
    nodes = [helper.make_node("Mul", ["q", "a"], ["force"]),
             helper.make_node("Mul", ["q", "b"], ["bq"]),
             helper.make_node("Add", ["bq", "half"], ["density"])]
    graph = helper.make_graph(nodes, "linear", [q], [force, density], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"neqforce.params": json.dumps(params.physical()), "neqforce.descriptor": "none/0",
            "neqforce.metrics": "{}", "neqforce.dataset_sha256": "", "neqforce.version": "test"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def linear_model(tmp_path_factory) -> Path:
    """A model covering the SPEC default physical parameters (any lattice size)."""
    return make_linear_model(tmp_path_factory.mktemp("model") / "linear.onnx", HolsteinParams())


@pytest.fixture(scope="module")
def server(linear_model):
    """A running server on a free loopback port with the test model (and the NEGF backend)."""
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[str(linear_model)], metrics_port=None,
                                    grace_s=1.0))
    yield srv
    srv.stop(grace=1.0)
