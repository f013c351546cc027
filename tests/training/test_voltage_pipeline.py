"""End to end for the voltage-range model on tiny NEGF data (8x6 and 10x6, three voltages): neqforce train
(--preset voltage, two committee members) → export (committee, calibrated spread threshold, domain) →
evaluate (Spearman of spread vs error) → a real server on 127.0.0.1: the voltage input changes the answer,
force_std equals the members' std, out-of-domain requests are refused or flagged, the spread policy, and
the q-only bundled model keeps its contract (force_std_max = -1)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from neqforce.cli import app  # noqa: E402
from neqforce.client.client import decode, encode_q  # noqa: E402
from neqforce.physics import HolsteinParams, bulk_cdw_amplitude  # noqa: E402
from neqforce.training.model import local_spread  # noqa: E402
from neqforce.v1 import force_service_pb2 as pb  # noqa: E402
from neqforce.v1 import force_service_pb2_grpc as pb_grpc  # noqa: E402

TEST_ID = "8x6/V3.000_s1"


@pytest.fixture(scope="module")
def committee(voltage_data, tmp_path_factory) -> dict:
    """Two members trained with `neqforce train --preset voltage`, exported as one calibrated committee."""
    runner = CliRunner()
    out = tmp_path_factory.mktemp("vruns")
    cks = []
    for seed in (0, 1):
        run = out / f"m{seed}"
        res = runner.invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "voltage",
                                  "--epochs", "3", "--hidden", "12,8", "--r-cut", "4", "--threads", "1",
                                  "--seed", str(seed), "--test-ids", TEST_ID, "--batch-size", "256"])
        assert res.exit_code == 0, res.output
        cks.append(str(run / "model.pt"))
    path = out / "committee.onnx"
    calib = [a for d in voltage_data for a in ("--calibrate", d)]
    # the target is loose for 3-epoch members (their error is far above the production target): the
    # threshold is then the largest validation spread, so validation frames are not flagged
    res = runner.invoke(app, ["export", *cks, "--out", str(path), *calib, "--spread-target", "10"])
    assert res.exit_code == 0, res.output
    members = []
    for i, ck in enumerate(cks):
        member = out / f"member{i}.onnx"
        res = runner.invoke(app, ["export", ck, "--out", str(member)])
        assert res.exit_code == 0, res.output
        members.append(member)
    return {"path": path, "members": members, "checkpoints": cks, "data": voltage_data}


def test_training_covers_voltages_and_lengths(committee):
    from neqforce.training.checkpoint import read_checkpoint
    from neqforce.training.export import read_metadata

    ck = read_checkpoint(committee["checkpoints"][0])
    assert ck["voltages"] == [2.5, 3.0, 3.5] and ck["lattices"] == [[8, 6], [10, 6]]
    assert ck["test_ids"] == [TEST_ID] and "10x6/V3.000_s0" in ck["train_ids"]
    assert set(ck["metrics"]["test"]) >= {"overall", "f_max"}
    meta = read_metadata(committee["path"])
    domain = json.loads(meta["neqforce.domain"])
    assert domain["ranges"] == {"voltage": [2.5, 3.5], "lx": [8, 10], "ly": [6, 6]}
    assert isinstance(domain["metallic_columns_max"], int)
    com = json.loads(meta["neqforce.committee"])
    assert com["members"] == 2 and com["spread_threshold"] > 0 and com["n_sites"] > 0
    assert "validation frames" in com["basis"]


def test_q_only_preset_refuses_several_voltages(voltage_data, tmp_path):
    res = CliRunner().invoke(app, ["train", voltage_data[0], "--out", str(tmp_path / "r"), "--voltage-range",
                                   "2,4", "--epochs", "1"])
    assert res.exit_code != 0 and "no voltage input" in res.output and "Traceback" not in res.output


def test_evaluate_reports_spread_error_correlation(committee, voltage_data, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", str(committee["path"]), *voltage_data, "--out",
                                   str(tmp_path / "ev"), "--split", "all", "--f-max", "1.494"])
    assert res.exit_code == 0, res.output
    assert "Spearman" in res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["f_max"] == 1.494 and {"8x6 V=2.5", "8x6 V=3.5", "10x6 V=3"} <= set(m["by_group"])
    assert -1.0 <= m["spread"]["spearman_sites"] <= 1.0 and m["spread"]["spread_threshold"] > 0


def _serve(models: list[Path], **cfg):
    from neqforce.server.app import ServerConfig, start_server

    return start_server(ServerConfig(host="127.0.0.1", port=0, models=models, negf_pool="thread", **cfg))


def _ask(stub, q: np.ndarray, backend=pb.BACKEND_AUTO, want_std: bool = False,
         **params) -> pb.ComputeForcesResponse:
    return stub.ComputeForces(pb.ComputeForcesRequest(q=encode_q(q), parameters=params, backend=backend,
                                                      want_force_std=want_std), timeout=120)


def _metal_left(lx: int, ly: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q0 = bulk_cdw_amplitude(HolsteinParams())
    x, y = np.arange(lx)[:, None], np.arange(ly)[None, :]
    q = q0 * (-1.0) ** (x + y) + 0.05 * rng.standard_normal((lx, ly))
    return np.where(np.broadcast_to(x < w, (lx, ly)), -0.35 + 0.05 * rng.standard_normal((lx, ly)), q)


@pytest.fixture(scope="module")
def served(committee):
    srv = _serve([committee["path"]], negf_max_sites=100)
    channel = grpc.insecure_channel(srv.address)
    yield pb_grpc.ForceServiceStub(channel), srv
    channel.close()
    srv.stop(grace=0.0)


def test_served_voltage_input_changes_the_answer_and_force_std_is_the_members_spread(served, committee):
    stub, _ = served
    q = _metal_left(8, 6, 3, seed=1)
    members = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in committee["members"]]
    answers = {}
    for v in (2.5, 3.5):
        r = _ask(stub, q, pb.BACKEND_ONNX, want_std=True, voltage=v)
        assert r.backend == pb.BACKEND_ONNX and r.parameters["voltage"] == v
        force, std = decode(r.force), decode(r.force_std)
        outs = np.stack([s.run(["force"], {"q": q[None].astype(np.float32),
                                           "voltage": np.array([v], np.float32)})[0][0] for s in members])
        np.testing.assert_allclose(force, outs.mean(0), atol=1e-5)
        # the members' std, its variance averaged over same-sublattice neighbours (model.local_spread)
        expected = local_spread(torch.from_numpy(outs.astype(np.float64).std(0))[None])[0].numpy()
        np.testing.assert_allclose(std, expected, atol=1e-5)
        assert r.force_std_max == pytest.approx(float(std.max()), rel=1e-6)
        answers[v] = force
    assert np.abs(answers[2.5] - answers[3.5]).max() > 1e-4
    plain = _ask(stub, q, pb.BACKEND_ONNX, voltage=3.0)
    assert not plain.HasField("force_std") and plain.force_std_max > 0  # the maximum comes always


def test_far_out_of_domain_request_is_refused_or_flagged(served):
    stub, _ = served
    q = _metal_left(40, 6, 30)  # a 30-column metallic domain on a 40-column device
    with pytest.raises(grpc.RpcError) as err:  # AUTO: g and V outside, NEGF fallback over its 100 sites
        _ask(stub, q, voltage=6.0, g=2.0)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "g=2" in err.value.details() and "voltage=6 outside [2.5, 3.5]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # explicit ONNX with other physics: refused
        _ask(stub, q, pb.BACKEND_ONNX, voltage=6.0, g=2.0)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    r = _ask(stub, q, pb.BACKEND_ONNX, voltage=6.0)  # same physics, V and lx outside: answered, flagged
    assert r.flagged and r.reason.startswith("OUTSIDE_DOMAIN")
    assert "voltage=6" in r.reason and "lx=40" in r.reason

def test_validation_frame_is_answered_unflagged(served, committee):
    from neqforce.trajectory import read_trajectory

    stub, _ = served
    frame = read_trajectory(Path(committee["data"][0]) / "V2.500_s0.h5").frames()["q"][4]  # validation
    r = _ask(stub, frame, want_std=True, voltage=2.5)
    assert r.backend == pb.BACKEND_ONNX and not r.flagged, r.reason
    assert 0 < r.force_std_max <= json.loads(read_metadata_committee(committee["path"]))["spread_threshold"]


def read_metadata_committee(path: Path) -> str:
    from neqforce.training.export import read_metadata

    return read_metadata(path)["neqforce.committee"]


def test_spread_above_threshold_goes_to_negf_or_is_flagged(committee, tmp_path):
    """A copy of the committee whose threshold is below any spread: AUTO within the NEGF cap gets exact
    NEGF (reason says why), explicit ONNX and AUTO over the cap are answered flagged HIGH_SPREAD."""
    import onnx

    model = onnx.load(str(committee["path"]))
    for entry in model.metadata_props:
        if entry.key == "neqforce.committee":
            entry.value = json.dumps({**json.loads(entry.value), "spread_threshold": 1e-9})
    strict = tmp_path / "strict.onnx"
    onnx.save(model, str(strict))
    srv = _serve([strict], negf_max_sites=50)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.ForceServiceStub(channel)
            q = _metal_left(8, 6, 3, seed=2)
            r = _ask(stub, q, voltage=3.0)
            assert r.backend == pb.BACKEND_NEGF and r.force_std_max == 0 and not r.flagged
            assert "committee spread" in r.reason and "threshold" in r.reason
            from neqforce.physics import negf_forces

            exact = negf_forces(q, HolsteinParams(lx=8, ly=6))[0]
            np.testing.assert_allclose(decode(r.force), exact, atol=1e-9)
            r = _ask(stub, q, pb.BACKEND_ONNX, voltage=3.0)
            assert r.backend == pb.BACKEND_ONNX and r.flagged and "HIGH_SPREAD" in r.reason
            r = _ask(stub, _metal_left(10, 6, 3), voltage=3.0)  # 60 sites: over the NEGF cap of 50
            assert r.backend == pb.BACKEND_ONNX and r.flagged and "no NEGF fallback" in r.reason
    finally:
        srv.stop(grace=0.0)


def test_q_only_bundled_model_keeps_its_contract():
    from neqforce.models import compact_model_path

    path = compact_model_path()
    if not path.is_file():
        pytest.skip("no bundled model in this tree")
    srv = _serve([path], negf_max_sites=50)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.ForceServiceStub(channel)
            r = _ask(stub, _metal_left(30, 28, 8), want_std=True)
            assert r.backend == pb.BACKEND_ONNX and r.force_std_max == -1 and not r.HasField("force_std")
            assert not r.flagged
            r = _ask(stub, _metal_left(12, 28, 4), pb.BACKEND_ONNX)  # lattice outside its 30x28 domain
            assert r.flagged and r.reason.startswith("OUTSIDE_DOMAIN")
    finally:
        srv.stop(grace=0.0)


def test_sweep_in_worker_forces_feed_the_voltage(committee):
    """`neqforce sweep`'s in-worker ONNX forces answer at the sweep point's voltage, not the model's own."""
    from neqforce.client.sweep_task import OnnxBatchForces

    q = _metal_left(8, 6, 3, seed=4)[None]
    sess = ort.InferenceSession(str(committee["path"]), providers=["CPUExecutionProvider"])
    for v in (2.5, 3.5):
        # explicit ONNX: the model's own answer (AUTO may replace a high-spread lattice by exact NEGF)
        force, _ = OnnxBatchForces(str(committee["path"]), params=HolsteinParams(lx=8, ly=6, voltage=v),
                                   requested="onnx")(q)
        expected = sess.run(["force"], {"q": q.astype(np.float32), "voltage": np.array([v], np.float32)})[0]
        np.testing.assert_allclose(force, expected, atol=1e-6)


def test_weight_long_changes_the_trained_member(committee, voltage_data, tmp_path):
    """Member 0's command with --weight-long 3 (the 10x6 sites weighted): recorded, reported, and a
    different model than the unweighted member 0 with the same seed."""
    from neqforce.training.checkpoint import read_checkpoint

    run = tmp_path / "w"
    res = CliRunner().invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "voltage",
                                   "--epochs", "3", "--hidden", "12,8", "--r-cut", "4", "--threads", "1",
                                   "--seed", "0", "--test-ids", TEST_ID, "--batch-size", "256",
                                   "--weight-long", "3"])
    assert res.exit_code == 0, res.output
    assert "long-lattice sites weighted 3" in res.output
    ck, ref = read_checkpoint(run / "model.pt"), read_checkpoint(committee["checkpoints"][0])
    assert ck["options"]["weight_long"] == 3.0 and ref["options"]["weight_long"] == 1.0
    assert any(not torch.equal(ck["state_dict"][k], ref["state_dict"][k]) for k in ref["state_dict"]
               if k.startswith("net."))
