"""Model loading (SPEC §9 contract checks, providers) and routing rules, without a network."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from neqforce.server.backends.onnx import CPU, CUDA, OnnxModel, unique_names
from neqforce.server.errors import RequestError
from neqforce.server.routing import resolve_parameters, route
from neqforce.v1 import force_service_pb2 as pb

onnx = pytest.importorskip("onnx")


def _edit(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def _set_meta(model: onnx.ModelProto, key: str, value: str | None) -> None:
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in kept + ([(key, value)] if value is not None else []):
        model.metadata_props.add(key=k, value=v)


def _rename_output(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        node.output[:] = ["dens" if o == "density" else o for o in node.output]
    model.graph.output[1].name = "dens"


def _rename_input(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        node.input[:] = ["x" if i == "q" else i for i in node.input]
    model.graph.input[0].name = "x"


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: _set_meta(m, "neqforce.params", None), "metadata 'neqforce.params' missing"),
    (lambda m: _set_meta(m, "neqforce.params", "{not json"), "is not JSON"),
    (lambda m: _set_meta(m, "neqforce.params", json.dumps({"voltage": 3.0})), "missing"),
    (lambda m: _set_meta(m, "neqforce.params", json.dumps({"voltage": 3.0, "mu": 1.0})), "unknown ['mu']"),
    (_rename_output, "needs outputs 'force' and 'density'"),
    (_rename_input, "needs input 'q'"),
], ids=["no-params", "bad-json", "missing-fields", "unknown-field", "no-density-output", "input-renamed"])
def test_contract_violations_are_refused(tmp_path, model_v3, edit, fragment: str) -> None:
    path = _edit(model_v3, tmp_path / "bad.onnx", edit)
    with pytest.raises(ValueError) as info:
        OnnxModel.load(path, "bad")
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="model file not found"):
        OnnxModel.load(tmp_path / "nope.onnx", "nope")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot load"):
        OnnxModel.load(junk, "junk")


def test_unavailable_cuda_provider_falls_back_to_cpu_and_is_logged(model_v3, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="neqforce.server.onnx")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # ONNX Runtime's own warning
        model = OnnxModel.load(model_v3, "m", providers=[CUDA, CPU])
    if CUDA in model.providers:
        pytest.skip("this machine has a working CUDA execution provider")
    assert model.providers == [CPU]
    assert any(r.getMessage() == "onnx_provider_unavailable" for r in caplog.records)


def test_loaded_model_metadata_and_run(model_v3, params, make_q, model_reference) -> None:
    model = OnnxModel.load(model_v3, "m", threads=1)
    assert model.params == params.physical() and len(model.sha256) == 64
    q = make_q((2, *params.shape))
    force, density = model.run(q, want_density=True)
    f_ref, n_ref = model_reference(q, params.physical())
    assert force.dtype == np.float32 and force.shape == q.shape
    np.testing.assert_allclose(force, f_ref, atol=1e-5)
    np.testing.assert_allclose(density, n_ref, atol=1e-6)
    force_only, none = model.run(q, want_density=False)
    assert none is None
    np.testing.assert_array_equal(force_only, force)


def test_unique_names() -> None:
    assert unique_names(["a/compact.onnx", "b/compact.onnx", "c/other.onnx", "d/compact.onnx"]) == \
        ["compact", "compact-2", "other", "compact-3"]


def test_coverage_tolerance_boundary(model_v3, params) -> None:
    model = OnnxModel.load(model_v3, "m", threads=1)
    physical = params.physical()
    rtol = 1e-6
    for name, value in physical.items():
        bound = rtol * max(1.0, abs(value))
        assert model.covers({**physical, name: value + 0.99 * bound}, rtol) == []
        assert model.covers({**physical, name: value - 1.01 * bound}, rtol) == [name]


def test_resolve_parameters_rules(params) -> None:
    assert resolve_parameters({}, 8, 6) == params.replace(lx=8, ly=6)  # SPEC defaults
    assert resolve_parameters({"lx": 8.0, "ly": 6.0, "voltage": 2.0}, 8, 6).voltage == 2.0
    for bad, fragment in (({"Voltage": 1.0}, "unknown parameter"), ({"ly": 5.0}, "disagrees"),
                          ({"k": 0.0}, "stiffness"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(RequestError) as info:
            resolve_parameters(bad, 8, 6)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message


def test_route_table(model_v3, model_v2, params) -> None:
    models = {name: OnnxModel.load(path, name, threads=1)
              for name, path in (("v3", model_v3), ("v2", model_v2))}
    p3, p2, p25 = params, params.replace(voltage=2.0), params.replace(voltage=2.5)

    def go(p, backend=pb.BACKEND_AUTO, name="", cap=1000, table=models):
        return route(p, backend, name, table, 1e-6, cap)

    assert go(p3).model_name == "v3" and go(p2).model_name == "v2"
    assert go(p25).backend == pb.BACKEND_NEGF and "closest" in go(p25).reason
    assert go(p3, pb.BACKEND_NEGF).backend == pb.BACKEND_NEGF
    assert go(p3, pb.BACKEND_ONNX, "v3").model_name == "v3"
    assert go(p3, name="v2").backend == pb.BACKEND_NEGF  # AUTO with a named, non-covering model
    assert go(p3.replace(lx=100, ly=100), cap=10).model_name == "v3"  # models are not size-capped
    code = grpc.StatusCode
    for kwargs, expected in (({"backend": pb.BACKEND_ONNX, "p": p25}, code.FAILED_PRECONDITION),
                             ({"backend": pb.BACKEND_ONNX, "p": p3, "table": {}}, code.FAILED_PRECONDITION),
                             ({"p": p25, "cap": 10}, code.RESOURCE_EXHAUSTED),
                             ({"backend": pb.BACKEND_NEGF, "p": p3, "cap": 10}, code.RESOURCE_EXHAUSTED),
                             ({"p": p3, "name": "zz"}, code.NOT_FOUND),
                             ({"p": p3, "backend": 7}, code.INVALID_ARGUMENT)):
        with pytest.raises(RequestError) as info:
            go(**kwargs)
        assert info.value.code == expected, kwargs
