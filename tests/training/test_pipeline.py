"""End to end on the tiny NEGF dataset: neqforce train → export → evaluate (seconds)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402


def test_train_export_evaluate(tiny_dataset, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", tiny_dataset, "--out", str(run), "--epochs", "4", "--hidden", "16,16",
                              "--threads", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "test (held-out trajectories)" in res.output
    assert (run / "model.pt").exists() and (run / "last.pt").exists()

    from neqforce.training.checkpoint import read_checkpoint

    ck = read_checkpoint(run / "model.pt")
    assert ck["train_ids"] == ["V3.000_s0"] and ck["test_ids"] == ["V3.000_s1"]  # split by trajectory
    assert len(ck["dataset_sha256"]) == 64
    assert ck["metrics"]["test"]["overall"]["mse"] > 0

    # resume continues from last.pt up to the new epoch count
    res = runner.invoke(app, ["train", tiny_dataset, "--out", str(run), "--epochs", "5", "--hidden", "16,16",
                              "--threads", "1", "--seed", "3", "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed at epoch 4" in res.output
    assert len(json.loads((run / "history.json").read_text())) == 5

    onnx_path = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", str(run / "model.pt"), "--out", str(onnx_path)])
    assert res.exit_code == 0, res.output
    assert "ONNX Runtime vs torch" in res.output

    from neqforce.training.export import read_metadata

    meta = read_metadata(onnx_path)
    params = json.loads(meta["neqforce.params"])
    assert params["voltage"] == 3.0 and "lx" not in params
    assert json.loads(meta["neqforce.metrics"])["test"]["overall"]["mse"] > 0
    assert meta["neqforce.dataset_sha256"] == ck["dataset_sha256"]

    ev = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", str(onnx_path), tiny_dataset, "--out", str(ev)])
    assert res.exit_code == 0, res.output
    for word in ("overall", "near_left", "near_right", "MSE", "sigma"):
        assert word in res.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["trajectories"] == ["V3.000_s1"]
    assert (ev / "parity.png").stat().st_size > 1000 and (ev / "error_hist.png").stat().st_size > 1000
    # the ONNX model and the checkpoint give the same metrics
    ev2 = tmp_path / "eval2"
    res = runner.invoke(app, ["evaluate", str(run / "model.pt"), tiny_dataset, "--out", str(ev2)])
    assert res.exit_code == 0, res.output
    m2 = json.loads((ev2 / "metrics.json").read_text())
    np.testing.assert_allclose(m2["overall"]["mse"], metrics["overall"]["mse"], rtol=1e-4)


def test_metrics_against_hand_computation():
    from neqforce.training.metrics import force_metrics

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 14, 4))
    pred = ref + 0.01 * rng.normal(size=ref.shape)
    m = force_metrics(pred, ref)
    fmax = np.abs(ref).max()
    d = (ref - pred) / fmax
    assert np.isclose(m["overall"]["mse"], np.mean(d**2)) and np.isclose(m["overall"]["sigma"], d.std())
    np.testing.assert_allclose(m["near_left"]["mse"], np.mean(d[:, :6] ** 2))
    np.testing.assert_allclose(m["near_right"]["mse"], np.mean(d[:, 8:] ** 2))
    np.testing.assert_allclose(m["bulk"]["mse"], np.mean(d[:, 6:8] ** 2))


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing.onnx"), str(tmp_path)])
    assert res.exit_code != 0
    assert "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0 and "error:" in res.output


def test_train_refuses_a_dataset_still_being_generated(tmp_path):
    """A half-written dataset is refused by default; with --allow-incomplete the model records it."""
    from neqforce.physics import HolsteinParams
    from neqforce.training.dataset import RunSpec, run_negf_bd

    params = HolsteinParams(lx=8, ly=6)
    data = tmp_path / "data"
    data.mkdir()
    run_negf_bd(data / "V3.000_s0.h5", params, RunSpec(3.0, 0, 12), dt=0.1, save_every=1, checkpoint_every=4)

    class Stop(Exception):
        pass

    def stop_after(n_seen=[0]):  # noqa: B006 - counter shared across calls on purpose
        def cb(n):
            n_seen[0] += n
            if n_seen[0] >= 9:
                raise Stop
        return cb

    try:
        run_negf_bd(data / "V3.000_s1.h5", params, RunSpec(3.0, 1, 40), dt=0.1, save_every=1,
                    checkpoint_every=4, progress=stop_after())
    except Stop:
        pass
    runner = CliRunner()
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--hidden", "8",
            "--test-ids", "V3.000_s0"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert "incomplete" in res.output and "V3.000_s1" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*args, "--allow-incomplete"])
    assert res.exit_code == 0, res.output
    ck = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert ck["dataset_complete"] is False and ck["dataset_frames"] > 0


def test_evaluate_validation_split_reads_only_the_validation_blocks(tiny_dataset, tmp_path):
    """--split validation: exactly the frames of the early-stopping blocks (steps 100-124 of a 130-step
    run), the same metrics as the model's predictions on those frames picked by hand; a dataset with no
    frame in a block is a one-line error."""
    from neqforce.physics import HolsteinParams
    from neqforce.training.dataset import DatasetSpec, RunSpec, generate_dataset
    from neqforce.training.evaluate import evaluate, load_any
    from neqforce.trajectory import read_trajectory

    data = tmp_path / "long"
    generate_dataset(data, DatasetSpec(params=HolsteinParams(lx=8, ly=6), runs=(RunSpec(3.0, 7, 130),)),
                     workers=1, show_progress=False)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", tiny_dataset, "--out", str(run), "--epochs", "1", "--hidden",
                                   "8,8", "--threads", "1"])
    assert res.exit_code == 0, res.output
    m = evaluate(run / "model.pt", str(data), split="validation", f_max=1.5, log=lambda _: None)
    fr = read_trajectory(next(data.glob("*.h5"))).frames()
    pick = (fr["step"] >= 100) & (fr["step"] <= 124)
    assert m["overall"]["n_sites"] == pick.sum() * 48 == 25 * 48
    lm = load_any(run / "model.pt", 1)
    pred = lm.predict(fr["q"][pick].astype(np.float32), np.full(pick.sum(), 3.0, np.float32))
    expected = np.mean(((fr["force"][pick] - pred) / 1.5) ** 2)
    np.testing.assert_allclose(m["overall"]["mse"], expected, rtol=1e-5)
    res = CliRunner().invoke(app, ["evaluate", str(run / "model.pt"), tiny_dataset, "--split", "validation"])
    assert res.exit_code == 2 and "no frame of the data lies in a validation block" in res.output


def test_evaluate_validation_all_split_reads_what_training_held_out(tiny_dataset, tmp_path):
    """--split validation-all: the validation blocks where a run has them (steps 100-124 of a 130-step run),
    and every fifth frame of a lattice group without blocks (the tiny dataset's short runs), as training
    holds them out — the number training logs as validation frames."""
    from neqforce.physics import HolsteinParams
    from neqforce.training.dataset import DatasetSpec, RunSpec, generate_dataset
    from neqforce.training.evaluate import evaluate

    data = tmp_path / "long"
    generate_dataset(data, DatasetSpec(params=HolsteinParams(lx=8, ly=6), runs=(RunSpec(3.0, 7, 130),)),
                     workers=1, show_progress=False)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", tiny_dataset, "--out", str(run), "--epochs", "1", "--hidden",
                                   "8,8", "--threads", "1", "--test-fraction", "0"])
    assert res.exit_code == 0, res.output
    logged = int(re.search(r"frames, (\d+) validation\)", res.output).group(1))
    m = evaluate(run / "model.pt", tiny_dataset, split="validation-all", f_max=1.5, log=lambda _: None)
    assert m["n_frames"] == logged > 0
    m_all = evaluate(run / "model.pt", tiny_dataset, split="all", f_max=1.5, log=lambda _: None)
    assert m_all["n_frames"] // 5 == m["n_frames"]
    m = evaluate(run / "model.pt", str(data), split="validation-all", f_max=1.5, log=lambda _: None)
    assert m["n_frames"] == 25


def test_fine_tuning_a_descriptor_model_starts_from_its_weights(tiny_dataset, tmp_path):
    """--init on a descriptor preset: the member's weights and normalization are loaded (with a vanishing
    learning rate the result is the member); other widths are refused in one line."""
    import torch

    from neqforce.training.checkpoint import read_checkpoint

    runner = CliRunner()
    base = ["train", tiny_dataset, "--hidden", "8", "--threads", "1", "--test-ids", "V3.000_s1"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    init = str(tmp_path / "a" / "model.pt")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--epochs", "1", "--init", init,
                              "--lr", "1e-12", "--lr-min", "1e-12"])
    assert res.exit_code == 0 and "starting from the weights" in res.output, res.output
    a, b = read_checkpoint(init)["state_dict"], read_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    for k, w in a.items():
        assert torch.allclose(w.float(), b[k].float(), atol=1e-6), k
    res = runner.invoke(app, ["train", tiny_dataset, "--hidden", "16", "--threads", "1", "--test-ids",
                              "V3.000_s1", "--out", str(tmp_path / "c"), "--epochs", "1", "--init", init])
    assert res.exit_code == 2 and "architecture differs" in res.output, res.output
    onnx_file = tmp_path / "m.onnx"  # not a checkpoint at all: one line, no traceback
    onnx_file.write_bytes(b"\x08\x07not a pickle")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--epochs", "1", "--init", str(onnx_file)])
    assert res.exit_code == 2 and "cannot read checkpoint" in res.output, res.output
