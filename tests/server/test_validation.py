"""Never a wrong answer with status OK, never an unbounded echo (issue 8): the |q| range, finiteness of
every output, bounded client strings in replies and logs. Real server on 127.0.0.1."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from neqforce.client import ForceClient, ForceServerError
from neqforce.server.text import MAX_MESSAGE, clip, clip_names
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .conftest import raw_request, rpc_status

pytestmark = pytest.mark.timeout(600)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.ForceServiceStub(channel)


# --- the |q| range ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, dtype, backend", [
    (1e200, "<f8", pb.BACKEND_NEGF),    # made the NEGF solver fail: INTERNAL with a traceback
    (1e39, "<f8", pb.BACKEND_ONNX),     # beyond float32: 840/840 NaN forces with status OK
    (3e38, "<f4", pb.BACKEND_ONNX),     # large finite FP32
    (-150.0, "<f8", pb.BACKEND_AUTO),
], ids=["negf-1e200", "onnx-fp64-1e39", "onnx-fp32-3e38", "auto-minus-150"])
def test_q_outside_the_physical_range_is_invalid(stub, server, params, make_q, captured_logs, value, dtype,
                                                 backend) -> None:
    q = make_q(params.shape)
    q[2, 3] = value
    request = raw_request(q, dtype, parameters=params.physical(), backend=backend)
    code, details = rpc_status(lambda: stub.ComputeForces(request, timeout=30))
    assert code == INVALID and "max_abs_q" in details and "|q| > 100" in details
    assert not any("Traceback" in line for line in captured_logs)
    ok = stub.ComputeForces(raw_request(make_q(params.shape), parameters=params.physical(),
                                     backend=pb.BACKEND_NEGF), timeout=30)
    assert ok.backend == pb.BACKEND_NEGF


def test_q_range_is_in_server_info_and_configurable(make_server, stub, server, params, make_q) -> None:
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.limits.max_abs_q == server.cfg.max_abs_q == 100.0
    q = make_q(params.shape)
    q[0, 0] = 150.0
    with make_server(max_abs_q=200.0) as srv, ForceClient(srv.address, retries=0, timeout=60) as c:
        r = c.compute_forces(q, params, backend="negf")
        assert np.isfinite(r.force).all() and np.isfinite(r.density).all()
    from neqforce.server.config import ServerConfig

    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e7):
        with pytest.raises(ValueError, match="max_abs_q"):
            ServerConfig(max_abs_q=bad)


def test_non_finite_model_output_is_internal_never_ok(make_server, build_nan_model, model_dir, params,
                                                      make_q) -> None:
    """A model that returns NaN for some finite, in-range inputs: INTERNAL with a clear message."""
    path = build_nan_model(model_dir / "nan_above_50.onnx", params.physical(), threshold=50.0)
    with make_server(models=[path]) as srv, ForceClient(srv.address, retries=0, timeout=60) as c:
        assert c.compute_forces(make_q(params.shape), params).backend == "onnx"  # finite where q < 50
        q = make_q(params.shape)
        q[1, 1] = 60.0
        for want_density in (True, False):
            with pytest.raises(ForceServerError) as info:
                c.compute_forces(q, params, want_density=want_density)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "1 non-finite force value(s)" in info.value.details()
            with c.stream(params, want_density=want_density) as s, pytest.raises(ForceServerError) as info:
                s.compute(q)
            assert info.value.code() == grpc.StatusCode.INTERNAL


# --- bounded echoes ---------------------------------------------------------------------------------------
def test_huge_model_name_gives_the_real_error(stub, params, make_q, captured_logs) -> None:
    name = "m" * 1_000_000
    for backend in (pb.BACKEND_ONNX, pb.BACKEND_AUTO, pb.BACKEND_NEGF):
        request = raw_request(make_q(params.shape), parameters=params.physical(), model=name, backend=backend)
        code, details = rpc_status(lambda r=request: stub.ComputeForces(r, timeout=30))
        assert code == grpc.StatusCode.NOT_FOUND, (code, details[:200])
        assert "no loaded model named 'mmm" in details and "999920 characters" in details
        assert "stencil_v3" in details and len(details) < 1000
    assert captured_logs and max(len(line) for line in captured_logs) < 3000


def test_many_unknown_parameter_names_are_listed_bounded(stub, params, make_q, captured_logs) -> None:
    parameters = {f"bogus_{i:04d}_" + "x" * 200: 1.0 for i in range(2000)}
    request = raw_request(make_q(params.shape), parameters=parameters)
    code, details = rpc_status(lambda: stub.ComputeForces(request, timeout=30))
    assert code == INVALID and "unknown parameter(s)" in details and "(+1992 more)" in details
    assert "known: [" in details and len(details) <= MAX_MESSAGE + 100
    assert max(len(line) for line in captured_logs) < 3000


def test_request_id_is_bounded_in_replies_and_logs(stub, params, make_q, captured_logs) -> None:
    request = raw_request(make_q(params.shape), parameters=params.physical(), request_id="r" * 100_000)
    code, details = rpc_status(lambda: stub.ComputeForces(request, timeout=30))
    assert code == INVALID and "request_id longer than 128" in details and len(details) < 200
    assert max(len(line) for line in captured_logs) < 1000


def test_clip_helpers() -> None:
    assert clip("abc") == "abc" and clip("a" * 81) == "a" * 80 + "...(+1 characters)"
    assert clip_names(["a", "b"]) == "['a', 'b']"
    assert clip_names([str(i) for i in range(10)], limit=3) == "['0', '1', '2', ... (+7 more)]"
    assert json.dumps(clip("x" * 10**6))[:5] == '"xxxx' and len(clip("x" * 10**6)) < 120
