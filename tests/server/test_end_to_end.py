"""End to end over gRPC on 127.0.0.1: NEGF equals the in-process physics, ONNX equals ONNX Runtime,
AUTO routes both ways, unary and stream agree, batches equal loops."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from neqforce.physics import electron_density, forces

pytestmark = pytest.mark.timeout(600)


def _ort(path, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    force, density = session.run(["force", "density"], {"q": q.astype(np.float32)[None]})
    return force[0], density[0]


def test_negf_backend_equals_in_process_physics(client, params, make_q) -> None:
    q = make_q(params.shape, seed=1)
    n_ref = electron_density(q, params)
    f_ref = forces(q, params, n_ref)
    r = client.compute_forces(q, params, backend="negf", want_density=True)
    assert r.backend == "negf" and r.model == "negf-exact"
    assert r.force.dtype == np.float64 and r.force.shape == params.shape
    np.testing.assert_allclose(r.force, f_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.density, n_ref, rtol=0, atol=1e-12)
    assert r.parameters == pytest.approx(params.physical(), rel=0, abs=0)


def test_negf_at_other_voltage_and_without_density(client, params, make_q) -> None:
    params = params.replace(voltage=1.3, temperature=0.05)
    q = make_q(params.shape, seed=2)
    r = client.compute_forces(q, params, backend="negf", want_density=False)
    assert r.density is None
    np.testing.assert_allclose(r.force, forces(q, params, electron_density(q, params)), rtol=0, atol=1e-12)


def test_onnx_backend_equals_direct_onnx_runtime(client, model_v3, params, make_q, model_reference) -> None:
    q = make_q(params.shape, seed=3)
    f_ort, n_ort = _ort(model_v3, q)
    r = client.compute_forces(q, params, backend="onnx", want_density=True)
    assert (r.backend, r.model) == ("onnx", "stencil_v3")
    np.testing.assert_array_equal(r.force, f_ort.astype(np.float64))
    np.testing.assert_array_equal(r.density, n_ort.astype(np.float64))
    f_np, n_np = model_reference(q, params.physical())  # independent NumPy reference of the graph
    np.testing.assert_allclose(r.force, f_np, atol=1e-5)
    np.testing.assert_allclose(r.density, n_np, atol=1e-6)


def test_onnx_batch_equals_loop_and_keeps_shape(client, params, make_q) -> None:
    qs = make_q((3, *params.shape), seed=4)
    batch = client.compute_forces(qs, params, backend="onnx")
    assert batch.force.shape == (3, *params.shape) and batch.density.shape == (3, *params.shape)
    for b in range(3):
        single = client.compute_forces(qs[b], params, backend="onnx")
        np.testing.assert_allclose(batch.force[b], single.force, rtol=0, atol=1e-6)


def test_negf_batch_equals_loop(client, params, make_q) -> None:
    qs = make_q((2, *params.shape), seed=5)
    batch = client.compute_forces(qs, params, backend="negf")
    for b in range(2):
        n_ref = electron_density(qs[b], params)
        np.testing.assert_allclose(batch.density[b], n_ref, rtol=0, atol=1e-12)


def test_onnx_model_is_lattice_size_agnostic(client, model_v3, params, make_q) -> None:
    q = make_q((11, 7), seed=6)
    r = client.compute_forces(q, params.replace(lx=11, ly=7), backend="onnx")
    np.testing.assert_array_equal(r.force, _ort(model_v3, q)[0].astype(np.float64))


def test_auto_routes_to_covering_model(client, model_v2, params, make_q) -> None:
    q = make_q(params.shape, seed=7)
    r = client.compute_forces(q, params, backend="auto")
    assert (r.backend, r.model) == ("onnx", "stencil_v3")
    assert "stencil_v3" in r.reason and "covers" in r.reason
    r2 = client.compute_forces(q, params.replace(voltage=2.0), backend="auto")
    assert (r2.backend, r2.model) == ("onnx", "stencil_v2")
    np.testing.assert_array_equal(r2.force, _ort(model_v2, q)[0].astype(np.float64))


def test_auto_within_tolerance_uses_model(client, params, make_q) -> None:
    q = make_q(params.shape, seed=8)
    near = params.replace(voltage=3.0 * (1 + 5e-7))  # inside rtol = 1e-6
    assert client.compute_forces(q, near).backend == "onnx"
    far = params.replace(voltage=3.0 * (1 + 5e-6))  # outside
    assert client.compute_forces(q, far).backend == "negf"


def test_auto_falls_back_to_negf_and_says_why(client, params, make_q) -> None:
    params = params.replace(voltage=2.5)
    q = make_q(params.shape, seed=9)
    r = client.compute_forces(q, params, backend="auto")
    assert (r.backend, r.model) == ("negf", "negf-exact")
    assert "no loaded model covers" in r.reason and "voltage=2.5" in r.reason and "NEGF" in r.reason
    np.testing.assert_allclose(r.density, electron_density(q, params), rtol=0, atol=1e-12)


def test_named_model(client, params, make_q) -> None:
    q = make_q(params.shape, seed=10)
    r = client.compute_forces(q, params.replace(voltage=2.0), backend="onnx", model="stencil_v2")
    assert r.model == "stencil_v2"


def test_stream_equals_unary_and_serves_many_messages(client, params, make_q) -> None:
    q = make_q(params.shape, seed=11)
    unary_onnx = client.compute_forces(q, params, backend="onnx")
    unary_negf = client.compute_forces(q, params, backend="negf")
    with client.stream(params, backend="onnx") as s:
        for _ in range(20):
            r = s.compute(q)
            np.testing.assert_array_equal(r.force, unary_onnx.force)
        assert s.messages == 20
    with client.stream(params, backend="negf", want_density=True) as s:
        r = s.compute(q)
        np.testing.assert_array_equal(r.force, unary_negf.force)
        np.testing.assert_array_equal(r.density, unary_negf.density)


def test_stream_drives_brownian_dynamics_like_in_process(client, params, make_q) -> None:
    """A short NEGF-BD run through the stream equals the same run with in-process forces, bit for bit."""
    from neqforce.physics import brownian_dynamics, negf_forces

    q0 = make_q(params.shape, seed=12)
    with client.stream(params, backend="negf") as s:
        def remote(q):
            r = s.compute(q)
            return r.force, r.density

        a = [st.q for st in brownian_dynamics(q0, remote, n_steps=3, dt=0.1, temperature=0.1, seed=3)]
    b = [st.q for st in brownian_dynamics(q0, lambda q: negf_forces(q, params), n_steps=3, dt=0.1,
                                          temperature=0.1, seed=3)]
    for qa, qb in zip(a, b, strict=True):
        np.testing.assert_allclose(qa, qb, rtol=0, atol=1e-12)


def test_float32_wire_input(server, params, make_q) -> None:
    from neqforce.client import ForceClient

    q = make_q(params.shape, seed=13)
    with ForceClient(server.address, dtype=np.float32) as c:
        r = c.compute_forces(q, params, backend="negf")
    q32 = q.astype(np.float32).astype(np.float64)
    f_ref = forces(q32, params, electron_density(q32, params))
    np.testing.assert_allclose(r.force, f_ref, rtol=0, atol=1e-12)


def test_parameters_default_when_omitted(client, params, make_q) -> None:
    q = make_q(params.shape, seed=14)
    r = client.compute_forces(q, {"voltage": 3.0}, backend="onnx")  # the rest: SPEC §4 defaults
    assert r.model == "stencil_v3" and r.parameters == params.physical()


def test_server_info(client, params) -> None:
    info = client.server_info()
    assert info["api"] == "neqforce.v1" and info["version"]
    names = {m["name"]: m for m in info["models"]}
    assert set(names) == {"stencil_v3", "stencil_v2"}
    assert names["stencil_v3"]["params"] == params.physical()
    assert names["stencil_v2"]["params"]["voltage"] == 2.0
    assert names["stencil_v3"]["descriptor"] == "test-stencil/1" and names["stencil_v3"]["metrics"]
    assert "CPUExecutionProvider" in names["stencil_v3"]["execution_providers"]
    assert info["limits"]["max_sites"] == 20_000 and info["limits"]["negf_max_sites"] == 600
    assert info["limits"]["max_message_bytes"] >= 20_000 * 16
    lim = info["limits"]
    # NEGF has its own slots and queue, reported beside the ONNX ones; the work cap, |Q| range, idle timeout
    assert lim["negf_concurrency"] >= 1 and lim["negf_max_queue"] >= 0
    assert lim["negf_max_work"] == 600.0 ** 3 and lim["max_abs_q"] > 0 and lim["stream_idle_timeout_s"] >= 0
    assert info["routing"]["rtol"] == 1e-6
    assert {b["backend"]: b["available"] for b in info["backends"]} == {"onnx": True, "negf": True}
    assert info["default_parameters"] == params.physical()
    assert info["auth_required"] is False


def test_bundled_default_models_none() -> None:
    """models=None loads the bundled model if it exists, else nothing (AUTO then means NEGF)."""
    from neqforce.models import bundled_model_path
    from neqforce.server.app import ServerConfig, model_paths

    expected = [bundled_model_path()] if bundled_model_path().is_file() else []
    assert model_paths(ServerConfig(models=None)) == expected
    assert model_paths(ServerConfig(models=[])) == []
