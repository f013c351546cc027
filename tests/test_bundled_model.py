"""CI guard of the shipped model: its forces against exact NEGF on fixed configurations inside its domain.

The bundled model's domain is the 30×28 device at V = 3.0 (neqforce/models/compact.json, "domain").
Three fixed configurations cover the regions the dynamics visits: the relaxed CDW (both electrodes'
edge columns), a metallic domain of 10 columns at the left electrode with its wall, and a metallic
domain of 25 columns whose wall is 4 columns from the right electrode. Error metrics:

* the paper's normalized one, δ = (F_NEGF − F_ML) / F_NORM with the FIXED F_NORM = 1.494 (max |F_NEGF|
  of the bundled model's test set, docs/ml_model.md; recorded in compact.json "metric_normalization"),
  MSE = mean δ² per configuration ≤ MSE_TOL;
* absolute (force units of t = 1): RMSE ≤ RMSE_TOL and max |ΔF| ≤ MAX_TOL per configuration.

Measured for the shipped model (docs/ml_model.md, "CI guard"): MSE 3.5e-6 / 5.5e-5 / 3.8e-4, RMSE
0.003 / 0.011 / 0.029, max |ΔF| 0.015 / 0.053 / 0.084. MSE_TOL is twice the paper-metric target 3e-4
(the worst configuration, the long metallic domain, uses 64 % of it); a model with random weights (its
weight matrices redrawn with the same mean and spread) must fail it on every configuration.
"""

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
MSE_TOL = 6e-4
RMSE_TOL = 0.04
MAX_TOL = 0.2
Q_METAL = -0.35
PARAMS = HolsteinParams()  # 30x28, V = 3.0: the only lattice inside the model's domain


def configurations() -> dict[str, np.ndarray]:
    """The fixed configurations (relaxed CDW + small noise; metallic domains at the left electrode)."""
    rng = np.random.default_rng(20261125)
    cdw = cdw_ground_state(PARAMS)
    out = {"cdw": cdw + 0.05 * rng.standard_normal(PARAMS.shape)}
    for w in (10, 25):
        q = cdw + 0.05 * rng.standard_normal(PARAMS.shape)
        q[:w] = Q_METAL + 0.05 * rng.standard_normal((w, PARAMS.ly))
        out[f"metal_{w}"] = q
    return out


@pytest.fixture(scope="module")
def exact() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(q, exact total force) per configuration, from the exact NEGF density."""
    from neqforce.physics import forces

    return {name: (q, forces(q, PARAMS, electron_density(q, PARAMS))) for name, q in configurations().items()}


def errors(model: Path, exact: dict) -> dict[str, dict[str, float]]:
    """Per configuration: normalized MSE, absolute RMSE and max |ΔF| of the model's total force."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = {}
    for name, (q, f_exact) in exact.items():
        (f_model,) = sess.run(["force"], {"q": q[None].astype(np.float32)})
        diff = f_exact - f_model[0].astype(np.float64)
        out[name] = {"mse": float(np.mean((diff / F_NORM) ** 2)), "rmse": float(np.sqrt(np.mean(diff**2))),
                     "max": float(np.max(np.abs(diff)))}
    return out


def failures(errs: dict[str, dict[str, float]]) -> list[str]:
    limits = {"mse": MSE_TOL, "rmse": RMSE_TOL, "max": MAX_TOL}
    return [f"{name}: {k} = {v:.3g} > {limits[k]:g}" for name, e in errs.items() for k, v in e.items()
            if not v <= limits[k]]


def test_bundled_preset_regenerates_the_training_data() -> None:
    """`neqforce dataset generate DIR --preset bundled` makes every trajectory the bundled model was
    trained and tested on (compact.json train_ids, test_ids), as long as it was."""
    from neqforce.training.dataset import preset_spec

    card = json.loads(bundled_model_path().with_suffix(".json").read_text())
    spec = preset_spec("bundled")
    runs = {r.name: r for r in spec.runs}
    used = card["training"]["train_ids"] + card["training"]["test_ids"]
    assert set(used) <= set(runs), sorted(set(used) - set(runs))
    assert [spec.params.lx, spec.params.ly] == card["training"]["lattice"]
    assert all(runs[name].n_steps == 600 for name in used)  # 601 frames each: 1202 test frames
    assert 2 * (600 + 1) == card["evaluation"]["n_frames"]


def test_normalization_constant_is_the_recorded_one() -> None:
    card = json.loads(bundled_model_path().with_suffix(".json").read_text())
    assert card["metric_normalization"]["f_norm"] == F_NORM
    assert abs(card["evaluation"]["f_max"] - F_NORM) < 1e-3


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
    assert redrawn >= 4  # two members, at least two weight matrices each
    path = tmp_path / "random.onnx"
    onnx.save(model, str(path))
    bad = failures(errors(path, exact))
    assert len(bad) >= 3, bad  # fails on every configuration, not only by a hair
