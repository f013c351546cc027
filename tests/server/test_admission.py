"""Admission and cancellation (issue 8): the total NEGF work of a request is capped, ONNX requests never
wait behind NEGF work, and an NEGF solve whose client gave up is stopped at once (worker killed and
restarted, slot freed). Real server on 127.0.0.1, real NEGF worker processes."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from neqforce.client import ForceClient, ForceServerError
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(600)

#: An NEGF lattice that takes tens of seconds on one core: a call that stays in flight.
LONG = (50, 50)


def _request(q: np.ndarray, params, backend: int = pb.BACKEND_NEGF) -> pb.ComputeForcesRequest:
    arr = np.ascontiguousarray(q, dtype="<f8")
    return pb.ComputeForcesRequest(q=pb.Tensor(shape=arr.shape, dtype=pb.DATA_TYPE_FP64,
                                               raw_contents=arr.tobytes()),
                                   parameters=params.physical(), backend=backend)


def _wait_for(condition, what: str, limit: float = 60.0) -> float:
    """Poll ``condition`` until true; returns the seconds it took (fails after ``limit``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, f"{what} did not happen within {limit} s"
        time.sleep(0.01)
    return time.monotonic() - start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_total_negf_work_of_a_request_is_capped(make_server, params, make_q) -> None:
    """A batch of lattices each under negf_max_sites is refused when batch * N^3 exceeds the budget
    (AUTO falling back to NEGF included); the limit is in GetServerInfo."""
    small = params.replace(lx=10, ly=10)
    with make_server(negf_max_sites=100) as srv, ForceClient(srv.address, retries=0, timeout=60) as c:
        with grpc.insecure_channel(srv.address) as ch:
            info = pb_grpc.ForceServiceStub(ch).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert info.limits.negf_max_work == 100.0 ** 3
        for backend in ("negf", "auto"):
            with pytest.raises(ForceServerError) as info:
                c.compute_forces(make_q((4, 10, 10)), small, backend=backend)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "negf_max_work" in info.value.details() and "batch 4" in info.value.details()
        assert c.compute_forces(make_q((1, 10, 10)), small, backend="negf").force.shape == (1, 10, 10)
    with make_server(negf_max_sites=100, negf_max_work=2.5e6) as srv, \
            ForceClient(srv.address, retries=0, timeout=60) as c:
        assert c.compute_forces(make_q((2, 10, 10)), small, backend="negf").force.shape == (2, 10, 10)
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q((3, 10, 10)), small, backend="negf")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_abandoned_negf_solve_is_killed_and_its_slot_freed(make_server, params, make_q) -> None:
    """Deadline, cancel and a dropped stream each stop the solve: the worker process is killed (and a
    fresh one started), the slot is free long before the solve could have finished."""
    long = params.replace(lx=LONG[0], ly=LONG[1])
    srv = make_server(negf_pool="process", negf_concurrency=1, negf_max_sites=LONG[0] * LONG[1])
    worker = srv.servicer.negf._procs[0]
    with ForceClient(srv.address, retries=0, timeout=120) as c, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.ForceServiceStub(ch)
        q_small = make_q(params.shape)
        reference = c.compute_forces(q_small, params, backend="negf")

        def give_up(how: str) -> None:
            pid = worker.proc.pid
            if how == "deadline":
                with pytest.raises(ForceServerError) as info:
                    c.compute_forces(make_q(long.shape), long, backend="negf", timeout=1.0)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            elif how == "cancel":
                call = stub.ComputeForces.future(_request(make_q(long.shape), long), timeout=120)
                _wait_for(lambda: worker.busy, "the solve reaching the worker")
                call.cancel()
            else:  # a stream whose client goes away mid-solve
                requests = iter([_request(make_q(long.shape), long)])
                responses = stub.StreamForces(requests, timeout=120)
                _wait_for(lambda: worker.busy, "the solve reaching the worker")
                responses.cancel()
            _wait_for(lambda: not _alive(pid) or worker.proc is None or worker.proc.pid != pid,
                      f"the worker busy with an abandoned solve ({how}) being stopped", limit=15)
            _wait_for(lambda: srv.servicer.negf_admission.active == 0, f"the slot freed ({how})", limit=15)
            again = c.compute_forces(q_small, params, backend="negf")  # a fresh worker serves the next one
            np.testing.assert_array_equal(again.force, reference.force)
            assert worker.proc.pid != pid

        for how in ("deadline", "cancel", "stream"):
            give_up(how)
        abandoned = srv.servicer.metrics.registry.get_sample_value("neqforce_negf_abandoned_total")
        assert abandoned == 3
        assert c.health() == "SERVING"


def test_onnx_requests_do_not_wait_behind_negf_work(make_server, model_v3, params, make_q) -> None:
    """With every NEGF slot busy and NEGF requests queued, ONNX requests are answered at once (own slots
    and queue) while the NEGF work is still running; health stays SERVING."""
    long = params.replace(lx=LONG[0], ly=LONG[1])
    srv = make_server(models=[model_v3], negf_pool="process", max_concurrency=1, max_queue=2,
                      negf_concurrency=1, negf_max_queue=2, negf_max_sites=LONG[0] * LONG[1])
    with grpc.insecure_channel(srv.address) as ch, ForceClient(srv.address, retries=0, timeout=120) as c:
        stub = pb_grpc.ForceServiceStub(ch)
        negf_calls = [stub.ComputeForces.future(_request(make_q(long.shape, seed=i), long), timeout=300)
                      for i in range(3)]  # one computing, two queued: NEGF is saturated
        try:
            _wait_for(lambda: srv.servicer.negf_admission.active == 1
                      and srv.servicer.negf_admission.waiting == 2, "NEGF saturated")
            for seed in range(5):
                r = c.compute_forces(make_q(params.shape, seed=seed), params, backend="auto")
                assert r.backend == "onnx"
                assert srv.servicer.negf_admission.active == 1  # the NEGF solve is still running
            assert c.health() == "SERVING"
            with pytest.raises(ForceServerError) as info:  # NEGF queue full: refused, not queued forever
                c.compute_forces(make_q(long.shape), long, backend="negf")
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "NEGF" in info.value.details()
        finally:
            for call in negf_calls:
                call.cancel()
        _wait_for(lambda: srv.servicer.negf_admission.active == 0, "NEGF slots freed after the cancels")


def test_many_onnx_clients_while_negf_is_busy(make_server, model_v3, params, make_q) -> None:
    """Several concurrent ONNX clients all finish while a long NEGF solve holds the only NEGF slot."""
    long = params.replace(lx=LONG[0], ly=LONG[1])
    srv = make_server(models=[model_v3], negf_pool="process", negf_concurrency=1,
                      negf_max_sites=LONG[0] * LONG[1])
    errors: list[Exception] = []

    def onnx_client(seed: int) -> None:
        try:
            with ForceClient(srv.address, retries=0, timeout=60) as c:
                for i in range(10):
                    assert c.compute_forces(make_q(params.shape, seed=seed + i), params).backend == "onnx"
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with grpc.insecure_channel(srv.address) as ch:
        negf = pb_grpc.ForceServiceStub(ch).ComputeForces.future(_request(make_q(long.shape), long),
                                                                timeout=300)
        try:
            _wait_for(lambda: srv.servicer.negf_admission.active == 1, "the NEGF solve starting")
            threads = [threading.Thread(target=onnx_client, args=(100 * i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            assert srv.servicer.negf_admission.active == 1
        finally:
            negf.cancel()
