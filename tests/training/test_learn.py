"""`neqforce learn` end to end on tiny lattices (real NEGF, real Dask LocalCluster, real ONNX Runtime, real
training): the first committee, one explore–select–label–train–export iteration that labels exactly the
explored frames above the threshold, and a rerun (after an interruption between labelling and training)
that resumes without relabelling or retraining a finished member."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402
from neqforce.physics import HolsteinParams, negf_forces  # noqa: E402
from neqforce.trajectory import read_trajectory  # noqa: E402

#: Initial NEGF-BD data: (lattice, voltage) of 15-step runs, seed 0.
RUNS = [((8, 6), 2.5), ((8, 6), 3.5), ((10, 6), 3.0)]
GRID = {"voltage": "2.5,3.5", "lx": "8,10", "ly": "6"}
SMALL = ["--members", "2", "--epochs", "3", "--hidden", "12,8", "--r-cut", "4", "--batch-size", "256",
         "--seeds", "1", "--steps", "10", "--save-every", "2", "--workers", "2", "--label-chunk", "2",
         "--max-per-point", "100", "--no-progress"]


@pytest.fixture(scope="module")
def data(negf_bd_folders) -> list[str]:
    return negf_bd_folders("ldata", [(lattice, v, 0) for lattice, v in RUNS])


def _learn(data: list[str], out: Path, *extra: str):
    args = ["learn", *data, "--out", str(out), "--voltage", GRID["voltage"], "--lx", GRID["lx"], "--ly",
            GRID["ly"], *SMALL, *extra]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def first(data, tmp_path_factory) -> dict:
    """The first committee (--max-iterations 0), and its exploration: every frame with its spread."""
    from neqforce.training.learn import LearnOptions, explore, model_path

    out = tmp_path_factory.mktemp("learn")
    res = _learn(data, out, "--max-iterations", "0")
    assert res.exit_code == 0, res.output
    assert model_path(out, 0).is_file()
    # the same exploration the loop runs (deterministic: ONNX on the CPU, fixed seeds); the loop resumes it
    opts = LearnOptions(out=out, data=tuple(data), grid=GRID, seeds=1, steps=10, save_every=2, workers=2,
                        progress=False)
    cands = explore(opts, model_path(out, 0), out / "it000" / "explore", echo=lambda s: None)
    spreads = np.array([c.spread for c in cands])
    threshold = float(np.median(np.unique(spreads)))
    return {"out": out, "cands": cands, "threshold": threshold}


@pytest.fixture(scope="module")
def one_iteration(data, first) -> dict:
    out = first["out"]
    res = _learn(data, out, "--max-iterations", "1", "--threshold", repr(first["threshold"]))
    assert res.exit_code == 0, res.output
    return {**first, "output": res.output}


def test_one_iteration_labels_only_frames_above_threshold(one_iteration):
    from neqforce.training.dataset import load_dataset
    from neqforce.training.learn_frames import frame_digest

    out, thr, cands = one_iteration["out"], one_iteration["threshold"], one_iteration["cands"]
    above = {}
    for c in sorted(cands, key=lambda c: -c.spread):  # identical frames (step 0 of every point) once
        if c.spread > thr:
            above.setdefault(frame_digest(c.q), (c.run, c.step))
    assert 0 < len(above) < len(cands)
    labelled = load_dataset(out / "labelled")
    got = [(f["run"], f["step"]) for t in labelled for f in t.extra["frames"]]
    assert sorted(got) == sorted(above.values())
    for t in labelled:
        assert t.complete and t.backend == "negf" and t.extra["iteration"] == 0
        assert t.extra["selected_by"]["model"] and t.extra["threshold"] == pytest.approx(thr)
        assert all(f["spread"] > thr for f in t.extra["frames"])
        fr = t.frames()
        force, density = negf_forces(fr["q"][0], t.params)  # the labels are the exact NEGF forces
        np.testing.assert_allclose(fr["force"][0], force, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fr["density"][0], density, rtol=1e-10, atol=1e-12)
    manifest = json.loads((out / "labelled" / "labelled.json").read_text())
    assert manifest["frames"] == len(above) and "neqforce" in manifest["versions"]


def test_iteration_retrains_reexports_and_logs(one_iteration):
    from neqforce.server.backends.onnx import OnnxModel
    from neqforce.training.checkpoint import read_checkpoint

    out = one_iteration["out"]
    nxt = OnnxModel.load(out / "models" / "it001.onnx", "it001", threads=1)
    assert nxt.committee and nxt.spread_threshold is not None and nxt.spread_threshold > 0
    ck = read_checkpoint(out / "it000" / "train" / "m0" / "model.pt")
    assert any("it000_" in i for i in ck["train_ids"])  # trained on the labelled frames too
    assert ck["dataset_frames"] > 3 * 16  # the NEGF-BD data (3 x 16 frames) plus the labelled frames
    lines = (out / "learn.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["frames_explored"] == len(one_iteration["cands"])
    selection = json.loads((out / "it000" / "selection.json").read_text())
    assert rec["frames_labelled"] == len(selection["frames"]) > 0
    assert rec["negf_core_hours"] > 0 and np.isfinite(rec["validation_mse"])
    # the logged validation MSE uses the fixed normalization, not the largest |F| of the grown data
    members = [read_checkpoint(out / "it000" / "train" / f"m{i}" / "model.pt")["metrics"] for i in range(2)]
    assert rec["validation_mse"] == pytest.approx(np.mean([m["validation_mse_fnorm"] for m in members]))
    assert all(m["f_norm"] == 1.494 for m in members)
    assert set(rec["max_spread"]) == {"lx=8_voltage=2.5", "lx=8_voltage=3.5", "lx=10_voltage=2.5",
                                      "lx=10_voltage=3.5"}
    assert "iteration 0: explored" in one_iteration["output"] and "core-h" in one_iteration["output"]


def test_rerun_resumes_without_relabelling(data, one_iteration):
    out = one_iteration["out"]
    labelled = sorted((out / "labelled").glob("*.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in labelled}
    m0 = out / "it000" / "train" / "m0" / "model.pt"
    m0_stamp = m0.stat().st_mtime_ns
    # as if interrupted after the first member, before the second member and the export
    (out / "models" / "it001.onnx").unlink()
    for name in ("model.pt", "last.pt"):
        (out / "it000" / "train" / "m1" / name).unlink()
    state = json.loads((out / "learn.json").read_text())
    state["iterations"] = []
    (out / "learn.json").write_text(json.dumps(state))
    res = _learn(data, out, "--max-iterations", "1", "--threshold", repr(one_iteration["threshold"]))
    assert res.exit_code == 0, res.output
    assert "labelling" not in res.output and "training member 2/2" in res.output
    assert "training member 1/2" not in res.output
    assert sorted((out / "labelled").glob("*.h5")) == labelled
    assert all(p.stat().st_mtime_ns == stamps[p] for p in labelled)
    assert m0.stat().st_mtime_ns == m0_stamp and (out / "models" / "it001.onnx").is_file()
    assert len((out / "learn.jsonl").read_text().splitlines()) == 1
    # and a rerun of a finished loop does nothing but report
    res = _learn(data, out, "--max-iterations", "1", "--threshold", repr(one_iteration["threshold"]))
    assert res.exit_code == 0 and "[done before]" in res.output and "exploring" not in res.output


def test_interrupted_labelling_relabels_only_the_missing_chunks_in_the_saved_order(data, one_iteration):
    """Label files are chunks of the saved selection, in its order (whatever order exploration lists the
    frames in): a rerun after Ctrl-C during labelling relabels exactly the frames of the missing files."""
    from neqforce.training.dataset import load_dataset

    out = one_iteration["out"]
    second = sorted((out / "labelled").glob("*_c1.h5"))
    assert second, "a point with two labelling chunks (--label-chunk 2)"
    point = second[0].name[len("it000_"):-len("_c1.h5")]
    victims = sorted((out / "labelled").glob(f"it000_{point}_c*.h5"))
    n_missing = sum(len(read_trajectory(v).frame_step) for v in victims)
    for v in victims:  # as if Ctrl-C came before that point's chunks were labelled
        v.unlink()
    sel_path = out / "it000" / "selection.json"
    sel = json.loads(sel_path.read_text())
    mine = [f for f in sel["frames"] if f["point"] == point]
    sel["frames"] = [f for f in sel["frames"] if f["point"] != point] + mine[::-1]  # another valid order
    sel_path.write_text(json.dumps(sel))
    state = json.loads((out / "learn.json").read_text())
    state["iterations"] = []
    (out / "learn.json").write_text(json.dumps(state))
    res = _learn(data, out, "--max-iterations", "1", "--threshold", repr(one_iteration["threshold"]))
    assert res.exit_code == 0, res.output
    assert f"labelling {n_missing} frame(s) with exact NEGF in {len(victims)} task(s)" in res.output
    first_chunk = read_trajectory(out / "labelled" / f"it000_{point}_c0.h5").extra["frames"]
    assert [(f["run"], f["step"]) for f in first_chunk] == [(f["run"], f["step"]) for f in mine[::-1][:2]]
    got = [(f["run"], f["step"]) for t in load_dataset(out / "labelled") for f in t.extra["frames"]]
    assert len(got) == len(set(got)) and set(got) == {(f["run"], f["step"]) for f in sel["frames"]}


def test_bad_options_are_one_line_errors(data, tmp_path):
    res = _learn(data, tmp_path / "x", "--members", "1")
    assert res.exit_code != 0 and "error: --members must be >= 2" in res.output
    assert "Traceback" not in res.output
    res = _learn(data, tmp_path / "y", "--threshold", "-1")
    assert res.exit_code != 0 and "error: --threshold" in res.output
    res = _learn(data, tmp_path / "z", "--preset", "rows")  # no ONNX export: cannot explore
    assert res.exit_code == 2 and "error: --preset must be one of voltage, range, conv" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "z").exists()


def test_range_preset_trains_the_committee_with_the_long_range_channel(data, tmp_path):
    """``--preset range`` (the bundled model's recipe) reaches the members and the exported graph."""
    from neqforce.training.checkpoint import read_checkpoint
    from neqforce.training.learn import model_path

    out = tmp_path / "r"
    res = _learn(data, out, "--max-iterations", "0", "--preset", "range")
    assert res.exit_code == 0, res.output
    for i in range(2):
        config = read_checkpoint(out / "init" / "train" / f"m{i}" / "model.pt")["config"]
        assert config["global_features"] == "voltage+metal+range"
    assert model_path(out, 0).is_file()
    assert json.loads((out / "learn.json").read_text())["request"]["train"]["preset"] == "range"


def test_conv_preset_runs_the_whole_loop(data, tmp_path):
    """``--preset conv`` (the bundled model's architecture): convolutional members, their committee explores,
    the frames above the threshold are labelled with exact NEGF, the members retrain on them and re-export."""
    from neqforce.training.checkpoint import read_checkpoint
    from neqforce.training.learn import model_path

    out = tmp_path / "c"
    small = [a for a in SMALL if a not in ("--hidden", "12,8", "--r-cut", "4")]
    res = CliRunner().invoke(app, ["learn", *data, "--out", str(out), "--voltage", GRID["voltage"], "--lx",
                                   GRID["lx"], "--ly", GRID["ly"], *small, "--preset", "conv",
                                   "--max-iterations", "1", "--threshold", "1e-9", "--max-per-point", "2"])
    assert res.exit_code == 0, res.output
    for k in (0, 1):
        assert model_path(out, k).is_file()
    for folder in (out / "init" / "train", out / "it000" / "train"):
        for i in range(2):
            assert read_checkpoint(folder / f"m{i}" / "model.pt")["config"]["arch"] == "conv"
    rec = json.loads((out / "learn.json").read_text())
    it = rec["iterations"][0]
    assert it["frames_labelled"] == 8 and not it["converged"], it  # 2 per point above 1e-9, 4 points
    assert rec["request"]["train"]["preset"] == "conv"
    res = CliRunner().invoke(app, ["learn", *data, "--out", str(tmp_path / "d"), "--preset", "conv",
                                   "--hidden", "8", "--max-iterations", "0", "--voltage", "3.0", "--lx", "8",
                                   "--ly", "6", "--no-progress", "--members", "2", "--epochs", "1"])
    assert res.exit_code == 2 and "does not apply to the convolutional preset" in res.output, res.output


def test_server_info_shows_the_committee_spread_threshold(one_iteration):
    """GetServerInfo's ModelInfo.force_std_threshold is the committee's calibrated threshold (0 for a
    q-only model); `neqforce info` prints it."""
    from neqforce.client import ForceClient
    from neqforce.client.jobs import format_server_info
    from neqforce.models import compact_model_path
    from neqforce.server.app import ServerConfig, start_server
    from neqforce.server.backends.onnx import OnnxModel

    path = one_iteration["out"] / "models" / "it001.onnx"
    expected = OnnxModel.load(path, "it001", threads=1).spread_threshold
    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[path, compact_model_path()],
                                    negf_pool="thread"))
    try:
        with ForceClient(srv.address) as client:
            info = client.server_info()
    finally:
        srv.stop(grace=0.0)
    by_name = {m["path"]: m for m in info["models"]}
    assert by_name["it001.onnx"]["force_std_threshold"] == pytest.approx(expected, rel=1e-12) and expected > 0
    assert by_name[compact_model_path().name]["force_std_threshold"] == 0.0
    assert f"threshold {expected:.4g}" in format_server_info(info)


def test_ctrl_c_leaves_a_resumable_loop(data, first, tmp_path):
    """SIGINT to a real `neqforce learn` process while it trains: exit 130 with one line, every file valid;
    the same command then finishes the iteration without relabelling."""
    from neqforce.training.dataset import load_dataset

    from .interrupted import interrupt_when

    out = tmp_path / "L"
    model = str(first["out"] / "models" / "it000.onnx")
    args = ["learn", *data, "--out", str(out), "--voltage", GRID["voltage"], "--lx", GRID["lx"], "--ly",
            GRID["ly"], *SMALL, "--max-iterations", "1", "--threshold", repr(first["threshold"]), "--model",
            model, "--epochs", "40"]
    # SIGINT inside the training epochs (both members can finish within ~1 s)
    code, text = interrupt_when(args, lambda line: "training member 1/2" in line, settle_s=0.2)
    assert code == 130, text
    assert "interrupted" in text and "Traceback" not in text
    labelled = sorted((out / "labelled").glob("*.h5"))
    assert labelled and len(load_dataset(out / "labelled")) == len(labelled)  # every label file is whole
    stamps = {p: p.stat().st_mtime_ns for p in labelled}
    res = _learn(data, out, "--max-iterations", "1", "--threshold", repr(first["threshold"]), "--model",
                 model, "--epochs", "40")
    assert res.exit_code == 0, res.output
    assert "labelling" not in res.output and (out / "models" / "it001.onnx").is_file()
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "labelled").glob("*.h5"))} == stamps
    assert len((out / "learn.jsonl").read_text().splitlines()) == 1


def test_members_trained_side_by_side_equal_those_trained_one_after_another(data, first, tmp_path):
    """--train-workers 2 trains the members in two Dask worker processes: the same checkpoints (weights)
    as the sequential path that made the first committee."""
    res = _learn(data, tmp_path / "par", "--max-iterations", "0", "--train-workers", "2")
    assert res.exit_code == 0, res.output
    assert "2 at a time" in res.output
    for i in range(2):
        seq = torch.load(first["out"] / "init" / "train" / f"m{i}" / "model.pt", weights_only=False)
        par = torch.load(tmp_path / "par" / "init" / "train" / f"m{i}" / "model.pt", weights_only=False)
        state_s, state_p = seq["state_dict"], par["state_dict"]
        assert state_s.keys() == state_p.keys()
        for k in state_s:
            assert torch.equal(state_s[k], state_p[k]), k


def test_a_failed_task_is_one_line_and_exit_1(data, tmp_path, monkeypatch):
    import neqforce.training.learn as learn

    def failing(opts, echo=print):
        raise RuntimeError("task lx=60_voltage=3/seeds0-1 failed: ImportError: something")

    monkeypatch.setattr(learn, "run_learn", failing)
    res = _learn(data, tmp_path / "f", "--max-iterations", "0")
    assert res.exit_code == 1
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: task") and "rerun the same command" in lines[0]


def test_selection_trust_window_and_spaced_pick():
    """--max-spread drops frames above the upper trust bound; --pick spaced spreads the labels evenly
    over a point's eligible frames (first and last kept) instead of taking the largest spreads."""
    from neqforce.training.learn_frames import Candidate, select_frames

    p = HolsteinParams(lx=8, ly=6)
    spreads = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 5.0, 9.0]
    cands = [Candidate("a", p, "r", i, s, np.full((8, 6), float(i))) for i, s in enumerate(spreads)]
    largest = select_frames(cands, 0.02, 3)
    assert [c.step for c in largest] == [8, 7, 6]
    trusted = select_frames(cands, 0.02, 3, max_spread=1.0)
    assert [c.step for c in trusted] == [6, 5, 4]
    spaced = select_frames(cands, 0.02, 3, max_spread=1.0, pick="spaced")
    assert [c.step for c in spaced] == [1, 3, 6]  # eligible steps 1..6, evenly: first, middle, last
    assert select_frames(cands, 0.02, 100, max_spread=1.0, pick="spaced") == cands[1:7]
    with pytest.raises(ValueError, match="pick"):
        select_frames(cands, 0.02, 3, pick="random")


def test_a_second_loop_on_the_same_out_is_refused(data, tmp_path):
    from neqforce.runlock import FolderLock

    out = tmp_path / "busy"
    out.mkdir()
    with FolderLock(out, "--out"):
        res = _learn(data, out)
    assert res.exit_code == 2 and "is being written by another neqforce process" in res.output
    assert "Traceback" not in res.output and not (out / "models").exists()
