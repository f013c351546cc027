"""Every error status is provoked over a real connection and asserted; the server keeps serving."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from neqforce.client import ForceClient, ForceServerError
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .conftest import raw_request, rpc_status

pytestmark = pytest.mark.timeout(600)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture()
def stub(server):
    """The raw generated stub, for requests the client library would never build."""
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.ForceServiceStub(channel)


def _still_serving(client, params, make_q) -> None:
    r = client.compute_forces(make_q(params.shape), params, backend="negf")
    assert r.backend == "negf" and np.isfinite(r.force).all()
    assert client.health() == "SERVING"


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.q.ClearField("shape") or r.q.shape.extend([48]), "shape [lx, ly] or [batch, lx, ly]"),
    (lambda r: r.q.ClearField("shape") or r.q.shape.extend([1, 1, 8, 6]), "shape [lx, ly]"),
    (lambda r: r.q.ClearField("shape") or r.q.shape.extend([8, 0]), "must be > 0"),
    (lambda r: r.q.ClearField("shape") or r.q.shape.extend([-8, -6]), "must be > 0"),
    (lambda r: r.q.ClearField("shape") or r.q.shape.extend([8, 7]), "needs 448"),
    (lambda r: setattr(r.q, "raw_contents", r.q.raw_contents[:-3]), "bytes"),
    (lambda r: setattr(r.q, "dtype", pb.DATA_TYPE_UNSPECIFIED), "dtype"),
    (lambda r: setattr(r.q, "dtype", 7), "dtype"),
    (lambda r: setattr(r.q, "dtype", pb.DATA_TYPE_FP32), "bytes"),  # FP32 label on FP64 bytes
    (lambda r: setattr(r, "backend", 9), "unknown backend"),
    (lambda r: r.parameters.update({"voltag": 3.0}), "unknown parameter(s) ['voltag']"),
    (lambda r: r.parameters.update({"lx": 9.0}), "disagrees with q's shape"),
    (lambda r: r.parameters.update({"gamma_bath": -1.0}), "gamma_bath"),
    (lambda r: r.parameters.update({"temperature": float("nan")}), "temperature"),
    (lambda r: r.ClearField("q"), "q is missing"),
    (lambda r: setattr(r, "model", "stencil_v3") or setattr(r, "backend", pb.BACKEND_NEGF), "BACKEND_NEGF"),
], ids=["rank1", "rank4", "zero-dim", "negative-dims", "shape-bytes-mismatch", "truncated-bytes",
        "dtype-unspecified", "dtype-unknown", "dtype-mislabelled", "backend-unknown", "parameter-unknown",
        "lx-mismatch", "parameter-out-of-range", "parameter-nan", "q-missing", "model-with-negf"])
def test_invalid_argument(stub, client, params, make_q, mutate, fragment: str) -> None:
    request = raw_request(make_q(params.shape), parameters=params.physical())
    mutate(request)
    code, details = rpc_status(lambda: stub.ComputeForces(request, timeout=10))
    assert code == INVALID and fragment in details
    _still_serving(client, params, make_q)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["<f8", "<f4"])
def test_non_finite_q_is_invalid(stub, client, params, make_q, bad: float, dtype: str) -> None:
    q = make_q(params.shape)
    q[3, 2] = bad
    code, details = rpc_status(lambda: stub.ComputeForces(raw_request(q, dtype), timeout=10))
    assert code == INVALID and "non-finite" in details
    _still_serving(client, params, make_q)


def test_client_library_raises_readable_errors(client, params, make_q) -> None:
    with pytest.raises(ForceServerError) as info:
        client.compute_forces(make_q(params.shape), {**params.physical(), "mu": 0.0})
    assert info.value.code() == INVALID and "unknown parameter(s) ['mu']" in str(info.value)
    with pytest.raises(ValueError, match="backend must be one of"):
        client.compute_forces(make_q(params.shape), params, backend="gpu")


def test_onnx_without_covering_model_is_failed_precondition(client, params, make_q) -> None:
    with pytest.raises(ForceServerError) as info:
        client.compute_forces(make_q(params.shape), params.replace(voltage=2.5), backend="onnx")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no loaded model covers" in info.value.details() and "voltage=2.5" in info.value.details()
    with pytest.raises(ForceServerError) as info:  # a named model that does not cover the parameters
        client.compute_forces(make_q(params.shape), params, backend="onnx", model="stencil_v2")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _still_serving(client, params, make_q)


def test_unknown_model_name_is_not_found(client, params, make_q) -> None:
    with pytest.raises(ForceServerError) as info:
        client.compute_forces(make_q(params.shape), params, backend="onnx", model="nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "stencil_v3" in info.value.details()


def test_onnx_with_no_models_loaded_is_failed_precondition(make_server, params, make_q) -> None:
    with make_server() as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q(params.shape), params, backend="onnx")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no ONNX model is loaded" in info.value.details()
        assert c.compute_forces(make_q(params.shape), params).backend == "negf"


def test_over_max_sites_is_resource_exhausted(client, params, make_q) -> None:
    q = make_q((400, 8, 7))  # 22400 sites > max_sites 20000
    with pytest.raises(ForceServerError) as info:
        client.compute_forces(q, params.replace(lx=8, ly=7), backend="onnx")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sites" in info.value.details()
    _still_serving(client, params, make_q)


def test_message_larger_than_limit_is_resource_exhausted(server, stub, client, params, make_q) -> None:
    """Bytes beyond the derived gRPC message limit are refused by the transport itself."""
    big = server.cfg.max_message_bytes // 8 + 1000
    request = pb.ComputeForcesRequest(q=pb.Tensor(shape=[big, 1], dtype=pb.DATA_TYPE_FP64,
                                                  raw_contents=bytes(8 * big)))
    code, _ = rpc_status(lambda: stub.ComputeForces(request, timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _still_serving(client, params, make_q)


def test_over_negf_cap_is_resource_exhausted(client, params, make_q) -> None:
    big = params.replace(lx=30, ly=28, voltage=2.5)  # 840 sites > negf_max_sites 600, no covering model
    for backend in ("negf", "auto"):
        with pytest.raises(ForceServerError) as info:
            client.compute_forces(make_q(big.shape), big, backend=backend)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "negf_max_sites = 600" in info.value.details()
    r = client.compute_forces(make_q(big.shape), big.replace(voltage=3.0), backend="auto")
    assert r.backend == "onnx"  # a covering model serves lattices beyond the NEGF cap
    _still_serving(client, params, make_q)


def test_full_queue_is_resource_exhausted(make_server, slow_params, params, make_q) -> None:
    with make_server(max_concurrency=1, max_queue=0, negf_max_sites=1000) as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        slow = threading.Thread(target=c.compute_forces, args=(make_q(slow_params.shape), slow_params))
        slow.start()
        while srv.servicer.negf_admission.active == 0:
            time.sleep(0.005)
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q(params.shape), params)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in info.value.details()
        slow.join()
        assert c.compute_forces(make_q(params.shape), params).backend == "negf"


def test_deadline_is_honoured(client, slow_params, params, make_q) -> None:
    with pytest.raises(ForceServerError) as info:
        client.compute_forces(make_q(slow_params.shape), slow_params, backend="negf", timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _still_serving(client, params, make_q)


def test_queued_request_times_out_in_queue(make_server, slow_params, params, make_q) -> None:
    with make_server(max_concurrency=1, max_queue=2, negf_max_sites=1000) as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        slow = threading.Thread(target=c.compute_forces, args=(make_q(slow_params.shape), slow_params))
        slow.start()
        while srv.servicer.negf_admission.active == 0:
            time.sleep(0.005)
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q(params.shape), params, timeout=0.1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        slow.join()
        assert srv.servicer.negf_admission.waiting == 0
        assert c.compute_forces(make_q(params.shape), params).backend == "negf"


def test_stream_error_ends_stream_with_status_and_next_stream_works(client, params, make_q) -> None:
    with client.stream(params, backend="onnx") as s:
        s.compute(make_q(params.shape))
        with pytest.raises(ForceServerError) as info:
            s.compute(make_q((8, 6)) * np.nan)
        assert info.value.code() == INVALID
        assert s.compute(make_q(params.shape)).backend == "onnx"  # reopened on the next message


def test_too_many_streams_is_resource_exhausted(make_server, params, make_q) -> None:
    with make_server(max_streams=1) as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        with c.stream(params) as first:
            first.compute(make_q(params.shape))
            with pytest.raises(ForceServerError) as info, c.stream(params) as second:
                second.compute(make_q(params.shape))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.compute(make_q(params.shape))
