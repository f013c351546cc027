"""Fixtures: small SPEC §9 contract models built with onnx.helper, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from neqforce.physics import HolsteinParams

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

#: The parameters the test models claim to cover (small lattices; voltage 3 and 2 for two models).
PARAMS = HolsteinParams(lx=8, ly=6)
SLOW = HolsteinParams(lx=24, ly=20)  # NEGF takes ~1 s here: calls that stay in flight


def build_contract_model(path: Path, params: dict[str, float], scale: float = 0.1) -> Path:
    """A valid SPEC §9 model: density = 1/2 + scale * tanh(q), force = g (density - 1/2) - k q - kappa Σ_nn q.

    The neighbour sum is built from Pad/Slice (open x, periodic y), so the graph is a real local force
    field; inputs and outputs are float32 [batch, lx, ly] with all dimensions dynamic.
    """
    g, k, kappa = params["g"], params["k"], params["kappa"]

    def const(name: str, values: list, dtype=TensorProto.INT64) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [len(values)],
                                                                                   values))

    big = 1 << 62
    nodes = [
        const("half", [0.5], TensorProto.FLOAT), const("scale", [scale], TensorProto.FLOAT),
        const("g", [g], TensorProto.FLOAT), const("k", [k], TensorProto.FLOAT),
        const("kappa", [kappa], TensorProto.FLOAT),
        const("pad_x", [0, 1, 0, 0, 1, 0]), const("ax1", [1]), const("ax2", [2]),
        const("s0", [0]), const("s2", [2]), const("s1", [1]), const("end", [big]),
        const("m1", [-1]), const("m2", [-2]),
        helper.make_node("Tanh", ["q"], ["th"]),
        helper.make_node("Mul", ["th", "scale"], ["dn"]),
        helper.make_node("Add", ["dn", "half"], ["density"]),
        # x neighbours (open): zero padding in x, then shift by ±1
        helper.make_node("Pad", ["q", "pad_x"], ["qp"], mode="constant"),
        helper.make_node("Slice", ["qp", "s0", "m2", "ax1"], ["x_minus"]),
        helper.make_node("Slice", ["qp", "s2", "end", "ax1"], ["x_plus"]),
        # y neighbours (periodic): roll by ±1 via Slice + Concat
        helper.make_node("Slice", ["q", "m1", "end", "ax2"], ["y_last"]),
        helper.make_node("Slice", ["q", "s0", "m1", "ax2"], ["y_head"]),
        helper.make_node("Concat", ["y_last", "y_head"], ["y_minus"], axis=2),
        helper.make_node("Slice", ["q", "s1", "end", "ax2"], ["y_tail"]),
        helper.make_node("Slice", ["q", "s0", "s1", "ax2"], ["y_first"]),
        helper.make_node("Concat", ["y_tail", "y_first"], ["y_plus"], axis=2),
        helper.make_node("Sum", ["x_minus", "x_plus", "y_minus", "y_plus"], ["nn"]),
        helper.make_node("Mul", ["dn", "g"], ["f_el"]),
        helper.make_node("Mul", ["q", "k"], ["kq"]),
        helper.make_node("Mul", ["nn", "kappa"], ["knn"]),
        helper.make_node("Sub", ["f_el", "kq"], ["f1"]),
        helper.make_node("Sub", ["f1", "knn"], ["force"]),
    ]
    dims = ["batch", "lx", "ly"]
    graph = helper.make_graph(nodes, "contract_test_model",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("force", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("density", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"neqforce.params": json.dumps(params), "neqforce.descriptor": "test-stencil/1",
            "neqforce.metrics": json.dumps({"force_rmse": 0.0}), "neqforce.dataset_sha256": "0" * 64,
            "neqforce.version": "test"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_model_output(q: np.ndarray, params: dict[str, float], scale: float = 0.1):
    """NumPy reference of :func:`build_contract_model` (float64)."""
    from neqforce.physics import elastic_force

    hp = HolsteinParams(lx=q.shape[-2], ly=q.shape[-1], **params)
    dn = scale * np.tanh(q)
    return params["g"] * dn + elastic_force(q, hp), 0.5 + dn


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_v3(model_dir: Path) -> Path:
    """Contract model valid at the default parameters (V = 3)."""
    return build_contract_model(model_dir / "stencil_v3.onnx", PARAMS.physical())


@pytest.fixture(scope="session")
def model_v2(model_dir: Path) -> Path:
    """Contract model valid at V = 2 (other parameters default), different response (scale 0.2)."""
    physical = PARAMS.replace(voltage=2.0).physical()
    return build_contract_model(model_dir / "stencil_v2.onnx", physical, scale=0.2)


@pytest.fixture(scope="module")
def server(model_v3: Path, model_v2: Path) -> Iterator:
    """A real server on 127.0.0.1 (free port) with both test models; small limits to provoke errors."""
    from neqforce.server.app import ServerConfig, start_server

    cfg = ServerConfig(host="127.0.0.1", port=0, models=[model_v3, model_v2], max_sites=20_000,
                       negf_max_sites=600, max_concurrency=2, max_queue=4, grace_s=2.0)
    srv = start_server(cfg)
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture()
def client(server) -> Iterator:
    from neqforce.client import ForceClient

    with ForceClient(server.address, timeout=300.0, retries=0) as c:
        yield c


def random_q(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Displacements of CDW size (|Q| ~ 1-2), float64."""
    return np.random.default_rng(seed).normal(0.0, 1.5, size=shape)


@pytest.fixture(scope="session")
def params() -> HolsteinParams:
    """Parameters the test model stencil_v3 covers, on an 8 x 6 lattice (NEGF in milliseconds)."""
    return PARAMS


@pytest.fixture(scope="session")
def slow_params() -> HolsteinParams:
    """A lattice on which NEGF takes about a second: for calls that must stay in flight."""
    return SLOW


def raw_request(q: np.ndarray, dtype: str = "<f8", **kw):
    """A ComputeForcesRequest built by hand (raw bytes of ``q`` in ``dtype``), for the raw stub."""
    from neqforce.v1 import force_service_pb2 as pb

    arr = np.ascontiguousarray(q, dtype=dtype)
    dt = pb.DATA_TYPE_FP64 if arr.dtype.itemsize == 8 else pb.DATA_TYPE_FP32
    return pb.ComputeForcesRequest(q=pb.Tensor(shape=arr.shape, dtype=dt, raw_contents=arr.tobytes()), **kw)


def rpc_status(fn) -> tuple:
    """(status code, details) of the gRPC error ``fn()`` must raise."""
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


@pytest.fixture()
def captured_logs() -> Iterator[list[str]]:
    """JSON log lines of the neqforce.server loggers during the test."""
    import logging

    from neqforce.server.logs import JsonFormatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("neqforce.server")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)

@pytest.fixture(scope="session")
def make_q():
    """random_q(shape, seed): float64 displacements of CDW size."""
    return random_q


@pytest.fixture(scope="session")
def model_reference():
    """NumPy reference (force, density) of the test models: reference(q, physical_params, scale)."""
    return reference_model_output


@pytest.fixture()
def make_server() -> Iterator:
    """start(**config) -> RunningServer on 127.0.0.1 (free port, no models, NEGF in threads unless given);
    every server started is stopped at the end of the test."""
    from neqforce.server.app import ServerConfig, start_server

    started = []

    def start(**overrides):
        defaults = {"host": "127.0.0.1", "port": 0, "models": [], "negf_pool": "thread"}
        cfg = ServerConfig(**{**defaults, **overrides})
        started.append(start_server(cfg))
        return started[-1]

    yield start
    for srv in started:
        srv.stop(grace=0.0)


@pytest.fixture(autouse=True)
def _restore_neqforce_logger() -> Iterator[None]:
    """``neqforce serve`` (run in-process by CliRunner) configures the ``neqforce`` logger; undo it."""
    import logging

    logger = logging.getLogger("neqforce")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def build_model():
    """build_model(path, physical_params, scale=0.1) -> path of a valid SPEC §9 test model."""
    return build_contract_model


def build_slow_model(path: Path, params: dict[str, float], width: int = 512) -> Path:
    """A contract model whose cost grows with the lattice: a Loop of batch*lx*ly (width x width) matmuls
    (~5 ms each on one core) feeding an output multiplied by 0 (force = 0, density = 1/2). The warm-up
    lattice (48 sites) takes a fraction of a second; 20 000 sites take minutes: an ONNX Runtime call that
    cannot be interrupted."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.normal(0, 1.0 / np.sqrt(width), (width, width))).astype(np.float32), "W")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["x_in", "W"], ["xw"]),
         helper.make_node("Tanh", ["xw"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [width, width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [width, width])])

    def const(name, value, dtype, dims=None):
        dims = [len(value)] if dims is None else dims
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, value))

    nodes = [
        helper.make_node("Size", ["q"], ["n"]),
        const("true", [True], TensorProto.BOOL, dims=[]),
        const("shape", [width, width], TensorProto.INT64),
        helper.make_node("ReduceMean", ["q"], ["m"], keepdims=0),
        helper.make_node("Expand", ["m", "shape"], ["x0"]),
        helper.make_node("Loop", ["n", "true", "x0"], ["x_final"], body=body),
        helper.make_node("ReduceMean", ["x_final"], ["s"], keepdims=0),
        const("zero", [0.0], TensorProto.FLOAT), const("half", [0.5], TensorProto.FLOAT),
        helper.make_node("Mul", ["q", "zero"], ["q0"]),
        helper.make_node("Mul", ["s", "zero"], ["s0"]),
        helper.make_node("Add", ["q0", "s0"], ["force"]),
        helper.make_node("Add", ["force", "half"], ["density"]),
    ]
    dims = ["batch", "lx", "ly"]
    graph = helper.make_graph(nodes, "slow_test_model",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("force", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("density", TensorProto.FLOAT, dims)],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="neqforce.params", value=json.dumps(params))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_nan_model(path: Path, params: dict[str, float], threshold: float = 50.0) -> Path:
    """A contract model that returns NaN forces where q > threshold (sqrt(threshold - q)), finite
    elsewhere: a broken model that passes its warm-up."""
    def const(name, value):
        tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [value])
        return helper.make_node("Constant", [], [name], value=tensor)

    nodes = [
        const("t", threshold), const("half", 0.5),
        helper.make_node("Sub", ["t", "q"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["force"]),
        helper.make_node("Add", ["q", "half"], ["qh"]),
        helper.make_node("Mul", ["qh", "half"], ["density"]),
    ]
    dims = ["batch", "lx", "ly"]
    graph = helper.make_graph(nodes, "nan_test_model",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("force", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("density", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="neqforce.params", value=json.dumps(params))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session", name="build_nan_model")
def _build_nan_model_fixture():
    """build_nan_model(path, physical_params, threshold) -> a model with NaN forces where q > threshold."""
    return build_nan_model


@pytest.fixture(scope="session", name="build_slow_model")
def _build_slow_model_fixture():
    """build_slow_model(path, physical_params) -> a model whose ONNX Runtime call takes minutes on large
    lattices."""
    return build_slow_model
