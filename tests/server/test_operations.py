"""Operations: health, reflection, graceful shutdown with a call in flight, token auth, TLS, metrics,
structured logs, client retries, and the ``neqforce serve`` process (SIGTERM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neqforce.client import ForceClient, ForceServerError
from neqforce.physics import electron_density
from neqforce.server.app import ServerConfig
from neqforce.v1 import SERVICE_NAME

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_flight(srv) -> None:
    deadline = time.monotonic() + 30
    while srv.servicer.negf_admission.active == 0:
        assert time.monotonic() < deadline, "the slow call never started"
        time.sleep(0.005)


class _Call(threading.Thread):
    """compute_forces in a background thread; keeps the result or the error."""

    def __init__(self, client: ForceClient, q: np.ndarray, params) -> None:
        super().__init__(daemon=True)
        self.client, self.q, self.params = client, q, params
        self.result = self.error = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.client.compute_forces(self.q, self.params, backend="negf")
        except ForceServerError as exc:
            self.error = exc


# --- health and reflection ------------------------------------------------------------------------------
def test_health_service(server, client) -> None:
    assert client.health() == "SERVING"
    assert client.health(SERVICE_NAME) == "SERVING"
    with pytest.raises(ForceServerError) as info:
        client.health("no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.address) as channel:  # the plain grpc.health.v1 stub, as probes use it
        probe = health_pb2_grpc.HealthStub(channel)
        reply = probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services_and_methods(server) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
        methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"ComputeForces": (False, False), "StreamForces": (True, True),
                       "GetServerInfo": (False, False)}


# --- graceful shutdown ----------------------------------------------------------------------------------
def test_graceful_shutdown_finishes_call_in_flight(make_server, slow_params, make_q) -> None:
    srv = make_server(negf_max_sites=1000, grace_s=300.0, drain_s=2.0)
    q = make_q(slow_params.shape, seed=21)
    with ForceClient(srv.address, retries=0, timeout=300) as c:
        call = _Call(c, q, slow_params)
        _in_flight(srv)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        status = None
        while status != "NOT_SERVING" and stopper.is_alive():  # health flips before calls are refused
            status = c.health()
        assert status == "NOT_SERVING"
        call.join(300)
        stopper.join(300)
        assert call.error is None, call.error
        np.testing.assert_allclose(call.result.density, electron_density(q, slow_params), rtol=0, atol=1e-12)
        assert srv.wait(0)
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q((8, 6)), slow_params.replace(lx=8, ly=6))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    srv.stop()  # idempotent


def test_shutdown_cancels_calls_past_the_grace_period(make_server, slow_params, make_q) -> None:
    srv = make_server(negf_max_sites=1000, grace_s=0.0)
    with ForceClient(srv.address, retries=0, timeout=300) as c:
        call = _Call(c, make_q(slow_params.shape), slow_params)
        _in_flight(srv)
        srv.stop()
        call.join(300)
    assert call.result is None and call.error is not None
    assert call.error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_negf_worker_crash_fails_one_request_and_worker_restarts(make_server, slow_params, params,
                                                                 make_q) -> None:
    srv = make_server(negf_pool="process", max_concurrency=1, negf_max_sites=1000)
    with ForceClient(srv.address, retries=0, timeout=600) as c:
        q = make_q(params.shape)
        first = c.compute_forces(q, params, backend="negf")
        worker = srv.servicer.negf._procs[0]
        old_pid = worker.proc.pid
        call = _Call(c, make_q(slow_params.shape), slow_params)
        deadline = time.monotonic() + 300
        while not worker.busy:
            assert time.monotonic() < deadline and call.is_alive(), "the solve never reached the worker"
            time.sleep(0.005)
        os.kill(old_pid, signal.SIGKILL)
        call.join(300)
        assert call.error is not None and call.error.code() == grpc.StatusCode.INTERNAL
        assert "worker process died" in call.error.details()
        again = c.compute_forces(q, params, backend="negf")  # a fresh worker serves the next request
        assert worker.proc.pid != old_pid
        np.testing.assert_array_equal(again.force, first.force)
        assert c.health() == "SERVING"


# --- authentication and TLS -----------------------------------------------------------------------------
def test_token_auth(make_server, params, make_q) -> None:
    q = make_q(params.shape)
    with make_server(token="s3cret-token") as srv:
        for token in (None, "wrong", "s3cret-token-but-longer"):
            with ForceClient(srv.address, token=token, retries=0) as c:
                for call in (lambda c=c: c.compute_forces(q, params), lambda c=c: c.server_info(),
                             lambda c=c: c.stream(params).compute(q)):
                    with pytest.raises(ForceServerError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "Bearer" in info.value.details()
                assert c.health() == "SERVING"  # probes need no token
        with ForceClient(srv.address, token="s3cret-token", retries=0) as c:
            assert c.compute_forces(q, params).backend == "negf"
            with c.stream(params) as s:
                assert s.compute(q).backend == "negf"
            assert c.server_info()["auth_required"] is True
        denied = srv.servicer.metrics.registry.get_sample_value(
            "neqforce_errors_total", {"method": "ComputeForces", "code": "UNAUTHENTICATED"})
        assert denied == 3


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls_with_token(make_server, tls_files, params, make_q) -> None:
    cert, key = tls_files
    q = make_q(params.shape)
    with make_server(token="tok", tls_cert=cert, tls_key=key) as srv:
        with ForceClient(srv.address, token="tok", tls_ca=cert, retries=0) as c:
            r = c.compute_forces(q, params)
            np.testing.assert_allclose(r.density, electron_density(q, params), rtol=0, atol=1e-12)
        with ForceClient(srv.address, token="tok", retries=0, timeout=3) as plain:  # plaintext to a TLS port
            with pytest.raises(ForceServerError) as info:
                plain.compute_forces(q, params)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_config_rejects_half_tls_and_empty_token(tls_files) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        ServerConfig(tls_cert=tls_files[0])
    with pytest.raises(ValueError, match="token"):
        ServerConfig(token="")


# --- metrics and logs -----------------------------------------------------------------------------------
def test_prometheus_metrics_endpoint(make_server, params, make_q) -> None:
    with make_server(metrics_port=0) as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        c.compute_forces(make_q(params.shape), params)
        with pytest.raises(ForceServerError):
            c.compute_forces(make_q(params.shape), {"bogus": 1.0})
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'neqforce_requests_total{backend="negf",code="OK",method="ComputeForces"} 1.0' in text
    invalid = 'neqforce_requests_total{backend="none",code="INVALID_ARGUMENT",method="ComputeForces"} 1.0'
    assert invalid in text
    assert 'neqforce_errors_total{code="INVALID_ARGUMENT",method="ComputeForces"} 1.0' in text
    assert 'neqforce_request_latency_seconds_count{backend="negf",method="ComputeForces"} 1.0' in text
    assert f'neqforce_sites_total{{backend="negf"}} {float(params.n_sites)}' in text


def test_structured_json_logs(server, client, params, make_q, captured_logs) -> None:
    client.compute_forces(make_q(params.shape), params, request_id="job-7")
    with pytest.raises(ForceServerError):
        client.compute_forces(make_q(params.shape), params, backend="onnx", model="missing",
                              request_id="job-8")
    records = [json.loads(line) for line in captured_logs]
    ok = next(r for r in records if r["event"] == "request")
    assert ok["request_id"] == "job-7" and ok["backend"] == "onnx" and ok["shape"] == [8, 6] and ok["ms"] >= 0
    failed = next(r for r in records if r["event"] == "request_failed")
    assert failed["code"] == "NOT_FOUND" and failed["request_id"] == "job-8" and failed["level"] == "warning"
    assert all({"ts", "level", "logger", "event"} <= set(r) for r in records)


# --- client retries -------------------------------------------------------------------------------------
def test_client_retries_unavailable_until_server_is_up(make_server, params, make_q) -> None:
    port = _free_port()
    box: dict = {}
    starter = threading.Timer(0.4, lambda: box.setdefault("srv", make_server(port=port)))
    starter.start()
    try:
        with ForceClient(f"127.0.0.1:{port}", retries=8, timeout=30) as c:
            assert c.compute_forces(make_q(params.shape), params).backend == "negf"
    finally:
        starter.join()
        box["srv"].stop()


def test_client_gives_up_after_retries(params, make_q) -> None:
    with ForceClient(f"127.0.0.1:{_free_port()}", retries=1, timeout=10) as c:
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q(params.shape), params)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "unavailable" in str(info.value)


def test_client_does_not_retry_other_errors(make_server, params, make_q) -> None:
    with make_server() as srv, ForceClient(srv.address, retries=5) as c:
        with pytest.raises(ForceServerError):
            c.compute_forces(make_q(params.shape), {"bogus": 1.0})
        count = srv.servicer.metrics.registry.get_sample_value(
            "neqforce_requests_total",
            {"method": "ComputeForces", "backend": "none", "code": "INVALID_ARGUMENT"})
    assert count == 1


def test_stream_per_message_timeout(make_server, slow_params, make_q) -> None:
    with make_server(negf_max_sites=1000) as srv, \
            ForceClient(srv.address, retries=0, timeout=300) as c:
        with c.stream(slow_params, backend="negf", timeout=0.05) as s:
            with pytest.raises(ForceServerError) as info:
                s.compute(make_q(slow_params.shape))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        small = slow_params.replace(lx=8, ly=6)
        with c.stream(small, backend="negf", timeout=30) as s:
            assert s.compute(make_q(small.shape)).backend == "negf"


# --- the neqforce serve process -------------------------------------------------------------------------
def _serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NEQFORCE_TOKEN", None)
    return subprocess.Popen([sys.executable, "-c", "from neqforce.cli import app; app()", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_serve_command_sigterm_with_call_in_flight(slow_params, make_q) -> None:
    proc = _serve("--port", "0", "--no-default-model", "--grace", "300", "--negf-max-sites", "1000")
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        address = line.split("listening on ", 1)[1].split()[0]
        q = make_q(slow_params.shape)
        with ForceClient(address, retries=0, timeout=300) as c:
            assert c.health() == "SERVING"
            call = _Call(c, q, slow_params)
            time.sleep(0.2)  # let the call reach the server
            proc.send_signal(signal.SIGTERM)
            call.join(300)
            assert call.error is None, call.error
            n_ref = electron_density(q, slow_params)
            # the server process runs LAPACK on one thread, this one on several: rounding-level
            # differences grow with the lattice (the 1e-12 equality is asserted on small lattices)
            np.testing.assert_allclose(call.result.density, n_ref, rtol=0, atol=1e-10)
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert events[0] == "server_started" and "shutdown_started" in events
    assert events[-1] == "shutdown_complete"


@pytest.mark.parametrize("args, code, fragment", [
    (["--model", "/nonexistent/model.onnx"], 2, "model file not found"),
    (["--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"], 2, "TLS certificate file not found"),
    (["--log-level", "chatty"], 2, "unknown log level"),
    (["--tls-cert", __file__], 1, "both tls_cert and tls_key"),
], ids=["missing-model", "missing-cert", "bad-log-level", "half-tls"])
def test_serve_command_errors_are_one_line(args: list[str], code: int, fragment: str) -> None:
    from typer.testing import CliRunner

    from neqforce.cli import app

    result = CliRunner().invoke(app, ["serve", "--port", "0", *args])
    assert result.exit_code == code and fragment in result.stderr and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_serve_command_rejects_broken_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neqforce.cli import app

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--model", str(bad)])
    assert result.exit_code == 1 and "cannot load" in result.stderr and "Traceback" not in result.output
