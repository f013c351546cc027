"""CI guard of the shipped model: its forces against exact NEGF on fixed configurations inside its domain.

The bundled model (neqforce/models/voltage.onnx, card voltage.json) covers V in [2, 4] on devices of 30 to
120 columns. Fixed configurations cover the regions the dynamics visits, at several voltages: the relaxed
CDW with noise (both electrodes' edge columns), metallic domains of 10 and 25 columns at the left
electrode with their wall (the second four columns from the right electrode on 30x28), a 45-column
metallic domain on the 80x28 device and a 40-column one on the 120x28 device (long-domain nonlocality,
docs/nonlocality.md). Error metrics:

* the paper's normalized one, δ = (F_NEGF − F_ML) / F_NORM with the FIXED F_NORM = 1.494 (max |F_NEGF|
  of the first bundled model's test set, docs/ml_model.md; recorded in the card "metric_normalization"),
  MSE = mean δ² per configuration ≤ MSE_TOL;
* absolute (force units of t = 1): RMSE ≤ RMSE_TOL and max |ΔF| ≤ MAX_TOL per configuration.

MSE_TOL is about four times the worst per-voltage MSE of 0.2's blind evaluation (5.2e-4 at V = 4.0) and
above the MSE 1.2e-3 where the committee's spread tolerance sits: a regression alarm, not the accuracy
target (the measured values, the largest 8.5e-4 for 0.4 and 1.1e-3 for 0.3 — a 25-column domain at V = 4 —
are in docs/ml_model.md, "CI guard"). A model with random weights (its weight matrices redrawn with the
same mean and spread) must fail it on every configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from neqforce.models import bundled_model_path
from neqforce.physics import HolsteinParams, cdw_ground_state, electron_density

pytestmark = pytest.mark.skipif(not bundled_model_path().is_file(), reason="no bundled model in this tree")

F_NORM = 1.494
MSE_TOL = 2e-3
RMSE_TOL = 0.07
MAX_TOL = 0.25
Q_METAL = -0.35
#: (name, lx, voltage, metallic columns at the left electrode): the fixed configurations.
CASES = [("cdw_V2.0", 30, 2.0, 0), ("metal10_V2.5", 30, 2.5, 10), ("cdw_V3.0", 30, 3.0, 0),
         ("metal10_V3.0", 30, 3.0, 10), ("metal25_V3.0", 30, 3.0, 25), ("metal25_V4.0", 30, 4.0, 25),
         ("metal45_80x28_V3.5", 80, 3.5, 45), ("metal40_120x28_V3.0", 120, 3.0, 40)]


def configurations() -> dict[str, tuple[HolsteinParams, np.ndarray]]:
    """The fixed configurations (relaxed CDW + small noise; metallic domains at the left electrode)."""
    rng = np.random.default_rng(20261201)
    out = {}
    for name, lx, voltage, w in CASES:
        params = HolsteinParams(lx=lx, voltage=voltage)
        q = cdw_ground_state(params) + 0.05 * rng.standard_normal(params.shape)
        q[:w] = Q_METAL + 0.05 * rng.standard_normal((w, params.ly))
        out[name] = (params, q)
    return out


@pytest.fixture(scope="module")
def exact() -> dict[str, tuple[HolsteinParams, np.ndarray, np.ndarray]]:
    """(params, q, exact total force) per configuration, from the exact NEGF density."""
    from neqforce.physics import forces

    return {name: (p, q, forces(q, p, electron_density(q, p))) for name, (p, q) in configurations().items()}


def errors(model: Path, exact: dict) -> dict[str, dict[str, float]]:
    """Per configuration: normalized MSE, absolute RMSE and max |ΔF| of the model's total force, and the
    committee's largest per-site spread."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = {}
    for name, (p, q, f_exact) in exact.items():
        f_model, std = sess.run(["force", "force_std"], {"q": q[None].astype(np.float32),
                                                        "voltage": np.array([p.voltage], np.float32)})
        diff = f_exact - f_model[0].astype(np.float64)
        out[name] = {"mse": float(np.mean((diff / F_NORM) ** 2)), "rmse": float(np.sqrt(np.mean(diff**2))),
                     "max": float(np.max(np.abs(diff))), "spread_max": float(np.max(std))}
    return out


def failures(errs: dict[str, dict[str, float]]) -> list[str]:
    limits = {"mse": MSE_TOL, "rmse": RMSE_TOL, "max": MAX_TOL}
    return [f"{name}: {k} = {v:.3g} > {limits[k]:g}" for name, e in errs.items() for k, v in e.items()
            if k in limits and not v <= limits[k]]


def _card() -> dict:
    return json.loads(bundled_model_path().with_suffix(".json").read_text())


def test_every_configuration_is_inside_the_declared_domain() -> None:
    card = _card()
    domain, measured = card["domain"], card["domain_restriction"]["metallic_columns_max"]
    for name, lx, voltage, w in CASES:
        lo, hi = domain["ranges"]["voltage"]
        assert lo <= voltage <= hi, name
        assert domain["ranges"]["lx"][0] <= lx <= domain["ranges"]["lx"][1], name
        assert w <= domain["metallic_columns_max"], name
        assert w <= measured, name  # the bound measured on the blind long-device set
        rule = card["domain_restriction"]["cdw_remnant"]  # no short CDW remnant next to a long domain
        assert not (w > rule["metallic_columns_over"] and lx - w < rule["non_metallic_columns_min"]), name


def test_normalization_constant_is_the_recorded_one() -> None:
    assert _card()["metric_normalization"]["f_norm"] == F_NORM


def test_training_data_are_the_committed_packs() -> None:
    """The card names the committed packs the model was trained on, with the hashes they unpack to."""
    root = Path(__file__).resolve().parents[1]
    card = _card()
    for pack in card["training_data"]["packs"]:
        manifest = json.loads((root / pack["folder"] / "manifest.json").read_text())
        assert {r["name"]: r["sha256_float32"] for r in manifest["runs"]} == pack["runs"], pack["folder"]


@pytest.mark.slow
def test_bundled_model_matches_exact_negf(exact) -> None:
    errs = errors(bundled_model_path(), exact)
    print(json.dumps(errs, indent=1))
    assert failures(errs) == []


@pytest.mark.slow
def test_random_weights_fail_the_same_check(exact, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(bundled_model_path()))
    rng = np.random.default_rng(0)
    redrawn = 0
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2 and w.size > 1:
            new = rng.normal(float(w.mean()), float(w.std()) or 1.0, size=w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
            redrawn += 1
    assert redrawn >= 6  # three members, at least two weight matrices each
    path = tmp_path / "random.onnx"
    onnx.save(model, str(path))
    bad = failures(errors(path, exact))
    assert len(bad) >= len(CASES), bad  # fails on every configuration, not only by a hair


def test_far_outside_the_domain_is_refused_or_flagged() -> None:
    """A real server on 127.0.0.1 with the bundled model: V = 6, a 200-column device that is all metal,
    and g = 2 never come back as a silent ML answer (AUTO: exact NEGF or refused; ONNX: flagged or
    refused), and an answer inside the domain is not flagged."""
    import grpc

    from neqforce.client import ForceClient, ForceServerError
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[bundled_model_path()],
                                    negf_max_sites=900, negf_pool="thread"))
    try:
        with ForceClient(srv.address, timeout=120.0, retries=0) as client:
            inside = HolsteinParams(voltage=2.75)
            r = client.compute_forces(cdw_ground_state(inside), inside)
            assert r.backend == "onnx" and not r.flagged
            v6 = HolsteinParams(voltage=6.0)
            r = client.compute_forces(cdw_ground_state(v6), v6)  # AUTO: exact NEGF, says why
            assert r.backend == "negf" and "voltage=6 outside [2, 4]" in r.reason
            r = client.compute_forces(cdw_ground_state(v6), v6, backend="onnx")
            assert r.flagged and r.reason.startswith("OUTSIDE_DOMAIN")
            long = HolsteinParams(lx=200)
            metal = -0.35 + 0.05 * np.random.default_rng(0).standard_normal(long.shape)
            r = client.compute_forces(metal, long, backend="onnx")
            assert r.flagged and "lx=200 outside" in r.reason
            with pytest.raises(ForceServerError) as info:  # AUTO: over the NEGF cap, refused with the reason
                client.compute_forces(metal, long)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "lx=200 outside" in str(info.value)
            g2 = HolsteinParams(g=2.0)
            with pytest.raises(ForceServerError) as info:  # other physics: explicit ONNX refused
                client.compute_forces(cdw_ground_state(inside), g2, backend="onnx")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "g=2" in str(info.value)
    finally:
        srv.stop(grace=1.0)


def test_fast_model_ships_with_its_card_and_restriction() -> None:
    """voltage_fast.onnx (0.7) is served with its card: the same sha256, the 58-column bound applied."""
    import hashlib

    from neqforce.models import fast_model_path
    from neqforce.server.backends.onnx import provenance_record, restrict_domain
    from neqforce.training.export import read_metadata

    path = fast_model_path()
    card = provenance_record(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert card is not None and card["file"] == "voltage_fast.onnx"
    declared = read_metadata(path)["neqforce.domain"]
    domain = json.loads(restrict_domain(declared, card["domain_restriction"], path))
    assert domain["metallic_columns_max"] == 58 and domain["ranges"]["voltage"] == [2.0, 4.0]
