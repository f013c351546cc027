"""Runs record their uncertainty (issue 10 §3): `simulate` and `sweep` write, per step, the largest committee
spread of the force (trajectory series/force_std_max) and every change of backend/flag with its reason
(extra["answers"]); files written before that dataset existed still read and resume. Real parts: a
committee exported to ONNX (random members), the embedded gRPC server, exact NEGF, a Dask LocalCluster."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402
from neqforce.physics import HolsteinParams  # noqa: E402
from neqforce.trajectory import read_trajectory  # noqa: E402

LX, LY = 10, 6


def _committee(path: Path, threshold: float) -> Path:
    """Two random voltage-input members as one committee graph, valid for V in [2.5, 3.5] on 8..12 x 6."""
    from neqforce.training.export import export_onnx
    from neqforce.training.model import EnsembleForceModel, ModelConfig, build_model

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = ModelConfig(descriptor="paper+elec", hidden=(12, 8), r_cut=4, global_features="voltage+metal")
        m = build_model(cfg, HolsteinParams().physical())
        with torch.no_grad():
            m.y_std.fill_(0.3)
            for p in m.net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        members.append(m.eval())
    meta = {"neqforce.params": json.dumps(HolsteinParams().physical()),
            "neqforce.domain": json.dumps({"ranges": {"voltage": [2.5, 3.5], "lx": [8, 12], "ly": [6, 6]},
                                           "metallic_columns_max": LX}),
            "neqforce.committee": json.dumps({"members": 2, "spread_threshold": threshold})}
    return export_onnx(EnsembleForceModel(members), path, meta)[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("committee")
    return {"loose": _committee(root / "loose.onnx", 1e3), "tight": _committee(root / "tight.onnx", 1e-9)}


def _spreads(model_path: Path, q: np.ndarray, voltage: float) -> np.ndarray:
    from neqforce.server.backends.onnx import OnnxModel

    model = OnnxModel.load(model_path, "m", threads=1)
    _, _, std = model.evaluate(q, False, params=HolsteinParams(voltage=voltage).physical())
    return std.reshape(len(q), -1).max(axis=1)


def _simulate(out: Path, model: Path, backend: str, voltage: float = 3.0, steps: int = 6):
    res = CliRunner().invoke(app, ["simulate", "--out", str(out), "--model", str(model), "--backend", backend,
                                   "--lx", str(LX), "--ly", str(LY), "--voltage", str(voltage), "--steps",
                                   str(steps), "--save-every", "1", "--no-plots", "--no-progress"])
    assert res.exit_code == 0, res.output
    return read_trajectory(out / "trajectory.h5")


def test_simulate_records_the_spread_of_every_step(models, tmp_path):
    traj = _simulate(tmp_path / "s", models["loose"], "onnx")
    _, spread = traj.spread_series()
    assert len(spread) == 7 and np.all(spread > 0)
    np.testing.assert_allclose(spread, _spreads(models["loose"], traj.frames()["q"], 3.0), rtol=1e-5)
    events = traj.extra["answers"]
    assert len(events) == 1 and events[0]["step"] == 0 and events[0]["backend"] == "onnx"
    assert events[0]["flagged"] is False and events[0]["kind"] == []


def test_simulate_records_the_negf_fallback_and_flags(models, tmp_path):
    # AUTO, spread above the (tight) threshold: exact NEGF every step, said once, spread 0 (NEGF)
    traj = _simulate(tmp_path / "auto", models["tight"], "auto")
    _, spread = traj.spread_series()
    assert np.all(spread == 0.0) and traj.backend == "negf"
    [event] = traj.extra["answers"]
    assert event["backend"] == "negf" and event["kind"] == ["spread->NEGF"]
    assert "committee spread" in event["reason"]
    # explicit ONNX outside the voltage domain: flagged OUTSIDE_DOMAIN (and HIGH_SPREAD), spread recorded
    traj = _simulate(tmp_path / "out", models["tight"], "onnx", voltage=4.0, steps=3)
    [event] = traj.extra["answers"]
    assert event["flagged"] is True and "OUTSIDE_DOMAIN" in event["kind"] and "HIGH_SPREAD" in event["kind"]
    assert "voltage" in event["reason"]
    np.testing.assert_allclose(traj.spread_series()[1], _spreads(models["tight"], traj.frames()["q"], 4.0),
                               rtol=1e-5)


def test_sweep_records_spread_per_replica_and_flags(models, tmp_path):
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--model", str(models["tight"]),
                                   "--backend", "onnx", "--voltage", "3.0,4.0", "--lx", str(LX), "--ly",
                                   str(LY), "--seeds", "2", "--steps", "4", "--save-every", "1", "--no-plots",
                                   "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "sw" / "runs").glob("*/seed*/trajectory.h5"))
    assert len(files) == 4
    for f in files:
        traj = read_trajectory(f)
        v = traj.params.voltage
        spread = traj.spread_series()[1]
        assert np.all(spread > 0)
        np.testing.assert_allclose(spread, _spreads(models["tight"], traj.frames()["q"], v), rtol=1e-5)
        [event] = traj.extra["answers"]
        assert event["backend"] == "onnx" and event["flagged"] is True and "HIGH_SPREAD" in event["kind"]
        assert ("OUTSIDE_DOMAIN" in event["kind"]) == (v > 3.5)


def test_files_without_the_spread_series_still_read_and_resume(models, tmp_path):
    from neqforce.client.simulate import NEGFForces, Simulation

    params = HolsteinParams(lx=LX, ly=LY)
    sim = Simulation.create(tmp_path / "t.h5", params, np.zeros(params.shape) + 0.1, n_steps=6, save_every=1)
    sim.run(NEGFForces(params), stop_at=3)
    with h5py.File(tmp_path / "t.h5", "r+") as f:  # as written before series/force_std_max existed
        del f["series/force_std_max"]
    old = read_trajectory(tmp_path / "t.h5")
    assert np.all(np.isnan(old.spread_series()[1])) and len(old.series_step) == 4
    sim = Simulation.open(tmp_path / "t.h5")
    sim.run(NEGFForces(params))
    traj = read_trajectory(tmp_path / "t.h5")
    spread = traj.spread_series()[1]
    assert traj.complete and len(spread) == 7
    assert np.all(np.isnan(spread[:4])) and np.all(spread[4:] == 0.0)  # NEGF: 0 once recorded


def test_a_run_flipping_backends_keeps_its_state_bounded():
    """ML/NEGF alternating every step (AUTO with a spread around the threshold) must not outgrow the run
    state a checkpoint can store (neqforce.trajectory.STATE_CAPACITY)."""
    from neqforce.client.answers import MAX_EVENTS, Answer, note_answer
    from neqforce.trajectory import STATE_CAPACITY

    extra: dict = {}
    why = "committee spread 0.123 above the calibrated threshold 0.1 of model 'm' (force units); " * 6
    for step in range(1000):
        negf = step % 2 == 1
        answer = Answer("negf" if negf else "onnx", "exact-negf" if negf else "m", False,
                        why + ("exact NEGF" if negf else "HIGH_SPREAD"), 0.0 if negf else 0.12)
        assert note_answer(extra, step, answer) == answer.force_std_max
    assert len(extra["answers"]) == MAX_EVENTS and extra["answers_dropped"] == 1000 - MAX_EVENTS
    assert len(json.dumps(extra)) < STATE_CAPACITY // 2
