"""The C++ example client (examples/cpp_client, built against the system gRPC) against a live server:
GetServerInfo, Health, ComputeForces and StreamForces, forces bit-for-bit equal to the Python client's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from neqforce.client import ForceClient
from neqforce.physics import HolsteinParams


def run_cpp(exe: Path, *args: str, stdin: bytes = b"", timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, timeout=timeout)


def random_q(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Displacements of CDW size (|Q| ~ 1-2), float64."""
    return np.random.default_rng(seed).normal(0.0, 1.5, size=shape)


def cpp_forces(exe: Path, server, q: np.ndarray, tmp_path: Path, *, command: str = "forces",
               backend: str = "auto",
               params: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forces and densities computed by the C++ client for q [frames, lx, ly] (read from stdin)."""
    lx, ly = q.shape[-2:]
    density_file = tmp_path / f"{command}_{backend}_density.f64"
    args = [command, "--server", server.address, "--lx", str(lx), "--ly", str(ly), "--backend", backend,
            "--density-out", str(density_file)]
    for name, value in (params or {}).items():
        args += ["--param", f"{name}={value!r}"]
    done = run_cpp(exe, *args, stdin=np.ascontiguousarray(q, dtype="<f8").tobytes())
    assert done.returncode == 0, done.stderr.decode()
    force = np.frombuffer(done.stdout, dtype="<f8").reshape(q.shape)
    density = np.fromfile(density_file, dtype="<f8").reshape(q.shape)
    return force, density


def test_server_info_and_health(cpp_client, server):
    with ForceClient(server.address) as py:
        info = py.server_info()
    done = run_cpp(cpp_client, "info", "--server", server.address)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert "name: neqforce" in lines and "api: neqforce.v1" in lines
    assert f"version: {info['version']}" in lines
    (model,) = info["models"]
    assert (f"model: {model['name']} path={model['path']} descriptor={model['descriptor']} "
            f"sha256={model['sha256']}") in lines
    assert model["descriptor"]  # the renamed field 5 (descriptor_name) carries the value to C++
    assert f"limits: max_sites={info['limits']['max_sites']} negf_max_sites=600" in " ".join(lines)

    for service in ("", "neqforce.v1.ForceService"):
        done = run_cpp(cpp_client, "health", "--server", server.address, "--service", service)
        assert (done.returncode, done.stdout.decode().strip()) == (0, "SERVING")
    done = run_cpp(cpp_client, "health", "--server", server.address, "--service", "no.such.Service")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("error: NOT_FOUND")


def test_onnx_forces_bit_for_bit(cpp_client, server, tmp_path):
    """A batch of two 30x28 lattices on the bundled model (FP32 answers widened to float64)."""
    p = HolsteinParams()
    q = random_q((2, *p.shape), seed=1)
    force, density = cpp_forces(cpp_client, server, q, tmp_path, backend="onnx")
    with ForceClient(server.address) as py:
        expected = py.compute_forces(q, p, backend="onnx")
    assert expected.backend == "onnx"
    assert force.tobytes() == expected.force.tobytes()
    assert density.tobytes() == expected.density.tobytes()


def test_negf_forces_with_parameters_bit_for_bit(cpp_client, server, tmp_path):
    """Parameters the model does not cover (V = 2.5): AUTO routes to exact NEGF (FP64), small lattice."""
    p = HolsteinParams(lx=8, ly=6, voltage=2.5)
    q = random_q(p.shape, seed=2)[None]
    force, density = cpp_forces(cpp_client, server, q, tmp_path, params={"voltage": 2.5})
    with ForceClient(server.address) as py:
        expected = py.compute_forces(q[0], {"voltage": 2.5})
    assert expected.backend == "negf"
    assert force[0].tobytes() == expected.force.tobytes()
    assert density[0].tobytes() == expected.density.tobytes()


@pytest.mark.parametrize("backend", ["onnx", "negf"])
def test_stream_forces_bit_for_bit(cpp_client, server, tmp_path, backend):
    """Three lattices, one StreamForces message each, against the Python client's stream."""
    p = HolsteinParams(lx=10, ly=8) if backend == "negf" else HolsteinParams()
    frames = random_q((3, *p.shape), seed=3)
    force, density = cpp_forces(cpp_client, server, frames, tmp_path, command="stream", backend=backend)
    with ForceClient(server.address) as py, py.stream({}, backend=backend) as s:
        results = [s.compute(q) for q in frames]
    assert {r.backend for r in results} == {backend}
    assert force.tobytes() == np.stack([r.force for r in results]).tobytes()
    assert density.tobytes() == np.stack([r.density for r in results]).tobytes()


def test_errors_are_one_line_with_the_status(cpp_client, server, tmp_path):
    q = np.zeros((6, 4)).tobytes()
    base = ["forces", "--server", server.address, "--lx", "6", "--ly", "4"]
    cases = {
        "INVALID_ARGUMENT": (base + ["--param", "voltag=3"], q),
        "bytes: not a whole number": (base, q[:-8]),
        "unknown option": (base + ["--bogus", "1"], q),
    }
    for expected, (args, data) in cases.items():
        done = run_cpp(cpp_client, *args, stdin=data)
        err = done.stderr.decode()
        assert done.returncode in (1, 2) and err.startswith("error: ") and expected in err, err
        assert err.count("\n") == 1 and done.stdout == b""
    done = run_cpp(cpp_client, "info", "--server", "127.0.0.1:1", "--timeout", "2")
    assert done.returncode == 1 and done.stderr.decode().startswith("error: UNAVAILABLE")


def test_bearer_token(cpp_client):
    """--token / NEQFORCE_TOKEN reach the server as "authorization: Bearer ..." metadata."""
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[], token="s3cret-token", grace_s=1.0))
    try:
        env = {k: v for k, v in os.environ.items() if k != "NEQFORCE_TOKEN"}
        args = [str(cpp_client), "info", "--server", srv.address]
        done = subprocess.run(args, capture_output=True, timeout=60, env=env)
        assert done.returncode == 1 and done.stderr.decode().startswith("error: UNAUTHENTICATED")
        done = subprocess.run(args + ["--token", "wrong"], capture_output=True, timeout=60, env=env)
        assert done.returncode == 1 and done.stderr.decode().startswith("error: UNAUTHENTICATED")
        with_token = {**env, "NEQFORCE_TOKEN": "s3cret-token"}
        done = subprocess.run(args, capture_output=True, timeout=60, env=with_token)
        assert done.returncode == 0 and "auth_required: true" in done.stdout.decode().splitlines()
    finally:
        srv.stop(grace=1.0)
