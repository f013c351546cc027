"""The device-wide convolutional model (training/conv.py): exact symmetries, reach, batch invariance, and
end to end on tiny NEGF data: `neqforce train --preset conv` (two members) → `neqforce export` (a calibrated
committee in the ONNX contract) → ONNX Runtime = torch → a real server on 127.0.0.1 answers with it."""

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
from neqforce.physics import HolsteinParams  # noqa: E402
from neqforce.training.conv import ConvConfig, ConvGraph, build_conv_model  # noqa: E402
from neqforce.v1 import force_service_pb2 as pb  # noqa: E402
from neqforce.v1 import force_service_pb2_grpc as pb_grpc  # noqa: E402

TEST_ID = "8x6/V3.000_s1"


def _model(seed: int = 0, channels: int = 4, dilations=(1, 2, 4), mirror: str = "average"):
    torch.manual_seed(seed)
    m = build_conv_model(ConvConfig(channels=channels, dilations=dilations, mirror=mirror),
                         HolsteinParams().physical())
    with torch.no_grad():  # random, not small: every output depends visibly on its inputs
        for p in m.net.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def _q(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1.5, shape).astype(np.float32))


@pytest.mark.parametrize("mirror", ["average", "equivariant"])
def test_mirror_translation_and_batch(mirror):
    m = _model(mirror=mirror)
    q, v = _q((3, 12, 7)), torch.tensor([2.0, 3.0, 4.0])
    with torch.no_grad():
        f = m(q, v)[0]
        mirror = torch.remainder(-torch.arange(7), 7)
        assert torch.allclose(m(q[..., mirror], v)[0], f[..., mirror], atol=1e-5)  # y → −y
        assert torch.allclose(m(torch.flip(q, [-1]), v)[0], torch.flip(f, [-1]), atol=1e-5)  # any mirror line
        assert torch.allclose(m(torch.roll(q, 3, -1), v)[0], torch.roll(f, 3, -1), atol=1e-5)  # y-translation
        assert torch.allclose(m(q[1:2], v[1:2])[0], f[1:2], atol=1e-6)  # batch = alone
        # the electrodes differ: mirroring in x is not a symmetry of the model (nor of the physics)
        assert not torch.allclose(m(torch.flip(q, [1]), v)[0], torch.flip(f, [1]), atol=1e-3)
        assert not torch.allclose(m(q, v + 0.5)[0], f, atol=1e-4)  # the voltage is an input


@pytest.mark.parametrize("mirror", ["average", "equivariant"])
def test_reach_is_the_declared_one(mirror):
    cfg = ConvConfig(channels=4, dilations=(1, 2, 4), mirror=mirror)
    assert cfg.reach == 9
    assert cfg.descriptor_name == ("conv-c4-reach9/1" if mirror == "average" else "conv-eq-c4-reach9/1")
    m = _model(mirror=mirror)
    q, v = _q((1, 30, 5)), torch.tensor([3.0])
    with torch.no_grad():
        f = m.electronic(q, v)
        far, near = q.clone(), q.clone()
        far[0, 10 + cfg.reach + 1] += 1.0  # just beyond the reach of column 10
        near[0, 10 + cfg.reach] += 1.0  # at the reach
        assert torch.equal(m.electronic(far, v)[0, 10], f[0, 10])
        assert (m.electronic(near, v)[0, 10] - f[0, 10]).abs().max() > 1e-6


@pytest.mark.parametrize("mirror", ["average", "equivariant"])
def test_narrow_lattices_and_chains(mirror):
    m = _model(mirror=mirror)
    with torch.no_grad():
        for shape in ((1, 5, 1), (2, 7, 3), (1, 3, 2)):
            f, n = m(_q(shape), torch.full((shape[0],), 3.0))
            assert f.shape == shape and torch.isfinite(f).all() and torch.isfinite(n).all()


def test_equivariant_network_is_a_plain_convolution_net_with_tied_kernels():
    """The paired kernels: an equivariant layer is one plain convolution whose b-outputs are its a-outputs
    on the mirrored input; half the free parameters of a plain net with as many channels, one pass."""
    from neqforce.training.conv import _MirrorConv

    torch.manual_seed(0)
    conv = _MirrorConv(6, 6, 3, dilation=(2, 1))
    x = torch.randn(2, 6, 9, 7)
    mirror = torch.remainder(-torch.arange(7), 7)
    swap = torch.cat([torch.arange(3, 6), torch.arange(3)])

    def m(t):  # the mirror on paired fields: swap a <-> b and y -> -y
        return t[:, swap][..., mirror]

    ext = torch.remainder(torch.arange(-1, 8), 7)
    with torch.no_grad():
        y1 = conv(m(x)[..., ext], padding=(2, 0))
        y2 = m(conv(x[..., ext], padding=(2, 0)))
    assert torch.allclose(y1, y2, atol=1e-6)
    eq = ConvConfig(channels=16, mirror="equivariant")
    avg = ConvConfig(channels=16)
    assert 2 * eq.macs_per_site() == avg.macs_per_site()
    n_eq = sum(p.numel() for p in build_conv_model(eq, HolsteinParams().physical()).parameters())
    n_avg = sum(p.numel() for p in build_conv_model(avg, HolsteinParams().physical()).parameters())
    assert n_eq < 0.55 * n_avg
    with pytest.raises(ValueError, match="even channel count"):
        ConvConfig(channels=5, mirror="equivariant")


def test_graph_spread_is_the_members_local_std():
    from neqforce.training.model import local_spread

    a, b = _model(0), _model(1)
    g = ConvGraph([a, b])
    q, v = _q((2, 9, 6)), torch.tensor([2.5, 3.5])
    with torch.no_grad():
        f, n, s = g(q, v)
        each = torch.stack([a.electronic(q, v), b.electronic(q, v)])
        assert torch.allclose(f, each.mean(0) + a.elastic(q), atol=1e-6)
        assert torch.allclose(s, local_spread(each.std(0, unbiased=False)), atol=1e-6)


@pytest.mark.parametrize("mirrors", [("average",) * 3, ("equivariant",) * 3,
                                     ("equivariant", "average", "equivariant")])
def test_export_graph_is_the_members_function_on_every_shape(mirrors):
    """ConvGraph (the lattice and its mirror as one batch, rows extended once, zero pads inside the
    convolutions) computes what the members' own forward computes, also for ly below the network's reach."""
    members = [_model(i, mirror=mirror) for i, mirror in enumerate(mirrors)]
    for m, (a, b) in zip(members, ((0.1, 0.5), (-0.2, 0.7), (0.0, 1.3)), strict=True):
        m.y_mean.fill_(a)
        m.y_std.fill_(b)
    with torch.no_grad():
        for shape in ((2, 11, 6), (1, 5, 1), (3, 7, 2), (1, 9, 3), (2, 4, 13)):
            q, v = _q(shape, seed=shape[2]), torch.linspace(2.0, 4.0, shape[0])
            each = torch.stack([m.electronic(q, v) for m in members])
            f, n, s = ConvGraph(members)(q, v)
            assert torch.allclose(f, each.mean(0) + members[0].elastic(q), atol=2e-5)
            assert torch.allclose(n, 0.5 + each.mean(0) / members[0].g, atol=2e-5)
            one = ConvGraph(members[:1])(q, v)
            assert len(one) == 2 and torch.allclose(one[0], members[0](q, v)[0], atol=2e-5)


@pytest.fixture(scope="module")
def conv_committee(voltage_data, tmp_path_factory) -> dict:
    runner = CliRunner()
    out = tmp_path_factory.mktemp("cruns")
    cks = []
    for seed in (0, 1):
        run = out / f"m{seed}"
        res = runner.invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "conv",
                                  "--epochs", "2", "--threads", "1", "--seed", str(seed),
                                  "--test-ids", TEST_ID])
        assert res.exit_code == 0, res.output
        assert "reach ±64 columns" in res.output
        cks.append(str(run / "model.pt"))
    path = out / "conv.onnx"
    calib = [a for d in voltage_data for a in ("--calibrate", d)]
    res = runner.invoke(app, ["export", *cks, "--out", str(path), *calib, "--spread-target", "10"])
    assert res.exit_code == 0, res.output
    return {"path": path, "checkpoints": cks}


def test_export_refuses_a_committee_mixing_architectures(conv_committee, voltage_data, tmp_path):
    runner = CliRunner()
    run = tmp_path / "compact"
    res = runner.invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "compact",
                              "--epochs", "1", "--threads", "1", "--test-ids", TEST_ID])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", conv_committee["checkpoints"][0], str(run / "model.pt"),
                              "--out", str(tmp_path / "mixed.onnx")])
    assert res.exit_code != 0 and "one architecture" in res.output, res.output
    assert not (tmp_path / "mixed.onnx").exists()


def test_trained_checkpoint_records_data_and_resumes(conv_committee, voltage_data, tmp_path):
    from neqforce.training.checkpoint import load_model, read_checkpoint

    ck = read_checkpoint(conv_committee["checkpoints"][0])
    assert ck["config"]["arch"] == "conv" and ck["voltages"] == [2.5, 3.0, 3.5]
    assert ck["lattices"] == [[8, 6], [10, 6]] and ck["test_ids"] == [TEST_ID]
    assert len(ck["dataset_sha256"]) == 64 and ck["epochs_run"] == 2
    model, _ = load_model(conv_committee["checkpoints"][0])
    assert float(model.y_std) > 0
    # the trained member differs from its seed-1 twin (the seed reaches the weights)
    other, _ = load_model(conv_committee["checkpoints"][1])
    assert not torch.equal(model.net.out.weight, other.net.out.weight)
    # --resume continues from last.pt (one more epoch), and a descriptor override is refused
    run = Path(conv_committee["checkpoints"][0]).parent
    res = CliRunner().invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "conv",
                                   "--epochs", "3", "--threads", "1", "--test-ids", TEST_ID, "--resume"])
    assert res.exit_code == 0 and "resumed at epoch 2" in res.output, res.output
    res = CliRunner().invoke(app, ["train", *voltage_data, "--out", str(tmp_path / "x"), "--preset", "conv",
                                   "--r-cut", "4"])
    assert res.exit_code == 2 and "--r-cut does not apply" in res.output and "Traceback" not in res.output


def test_fine_tuning_starts_from_the_given_weights(conv_committee, voltage_data, tmp_path):
    """--init loads a member's weights and normalization (a warm restart): with a vanishing learning rate the
    result is the member itself; the file is recorded by its sha256; another architecture or a missing file
    is a one-line error."""
    from neqforce.hashing import sha256_file
    from neqforce.training.checkpoint import read_checkpoint

    init = conv_committee["checkpoints"][1]
    run = tmp_path / "ft"
    res = CliRunner().invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "conv",
                                   "--epochs", "1", "--threads", "1", "--test-ids", TEST_ID, "--init", init,
                                   "--lr", "1e-12", "--lr-min", "1e-12", "--seed", "5"])
    assert res.exit_code == 0 and "starting from the weights" in res.output, res.output
    a, b = read_checkpoint(init), read_checkpoint(run / "model.pt")
    assert b["init_sha256"] == sha256_file(init) and b["options"]["init"] == init
    for k, w in a["state_dict"].items():
        assert torch.allclose(w.float(), b["state_dict"][k].float(), atol=1e-6), k
    for preset, init_path, said in (("conv6", init, "architecture differs"),
                                    ("conv", str(tmp_path / "none.pt"), "no such file")):
        res = CliRunner().invoke(app, ["train", *voltage_data, "--out", str(tmp_path / preset), "--preset",
                                       preset, "--epochs", "1", "--threads", "1", "--test-ids", TEST_ID,
                                       "--init", init_path])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output


def test_exported_committee_keeps_the_contract(conv_committee):
    from neqforce.training.export import read_metadata

    path = conv_committee["path"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["q", "voltage"]
    assert [o.name for o in sess.get_outputs()] == ["force", "density", "force_std"]
    meta = read_metadata(path)
    assert meta["neqforce.descriptor"].startswith("ensemble[conv-c16-reach64/1")
    ranges = json.loads(meta["neqforce.domain"])["ranges"]
    assert ranges == {"voltage": [2.5, 3.5], "lx": [8, 10], "ly": [6, 6]}
    com = json.loads(meta["neqforce.committee"])
    assert com["members"] == 2 and com["spread_threshold"] > 0
    assert json.loads(meta["neqforce.batch_invariant"]) is True


def _served_like_ort(path: Path, q: np.ndarray, voltage: float):
    """A real server on 127.0.0.1 with the model at ``path`` answers ``q`` at ``voltage`` (backend ONNX,
    per-site spread requested) with ONNX Runtime's force and the largest of its force_std; the response."""
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[path], negf_pool="thread"))
    try:
        stub = pb_grpc.ForceServiceStub(grpc.insecure_channel(srv.address))
        lx, ly = q.shape
        res = stub.ComputeForces(pb.ComputeForcesRequest(
            q=encode_q(q), parameters={"lx": lx, "ly": ly, "voltage": voltage}, backend=pb.BACKEND_ONNX,
            want_force_std=True), timeout=60)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"q": q[None].astype(np.float32), "voltage": np.array([voltage], np.float32)}
        f, _, s = sess.run(None, feeds)
        np.testing.assert_allclose(decode(res.force), f[0], atol=1e-6)
        assert res.force_std_max == pytest.approx(float(s.max()), rel=1e-5)
        return res
    finally:
        srv.stop()


def test_served_by_a_real_server(conv_committee):
    _served_like_ort(conv_committee["path"], np.random.default_rng(3).normal(0, 1.0, (8, 6)), 3.25)


# --- distillation: one network fitted to a committee, with a learned spread (rule 0.11) ---------------------

def test_spread_head_cannot_change_the_force():
    """The spread head learns from the trunk's features detached: its loss puts no gradient on the force
    network, and the force output is the network's without the head."""
    from neqforce.training.conv_train import _distill_loss

    torch.manual_seed(0)
    cfg = ConvConfig(channels=4, dilations=(1, 2), spread_head=True)
    m = build_conv_model(cfg, HolsteinParams().physical())
    q, v = _q((3, 8, 6)), torch.tensor([2.5, 3.0, 3.5])
    h, s = m.head_and_spread(q, v)
    assert torch.allclose(h, m.head(q, v)) and bool((s > 0).all())
    y = torch.zeros_like(q)
    target = [torch.zeros_like(q), torch.full_like(q, 0.05)]
    _, spread_loss = _distill_loss(m, q, y, v, target, labelled=True, alpha=0.5)
    spread_loss.backward()
    for name, p in m.net.named_parameters():
        if name.startswith("spread_"):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None or float(p.grad.abs().sum()) == 0, name
    # the force loss: α = 1 fits the teacher's mean only, α = 0 the labels only
    a1, _ = _distill_loss(m, q, y, v, [torch.ones_like(q), target[1]], labelled=True, alpha=1.0)
    a0, _ = _distill_loss(m, q, y, v, [torch.ones_like(q), target[1]], labelled=True, alpha=0.0)
    with torch.no_grad():
        h = m.head(q, v)
        assert float(a1) == pytest.approx(float(((h - (1 - m.y_mean) / m.y_std) ** 2).mean()), rel=1e-5)
        assert float(a0) == pytest.approx(float(((h - (0 - m.y_mean) / m.y_std) ** 2).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def distilled(conv_committee, voltage_data, tmp_path_factory) -> dict:
    """`neqforce train --teacher` (the two-member committee, an ML-BD transfer run of it) → export."""
    runner = CliRunner()
    out = tmp_path_factory.mktemp("distil")
    transfer = out / "transfer"
    res = runner.invoke(app, ["simulate", "--backend", "onnx", "--model", str(conv_committee["path"]),
                              "--lx", "8", "--ly", "6", "--voltage", "3.0", "--steps", "40",
                              "--save-every", "2",
                              "--no-plots", "--out", str(transfer / "run")])
    assert res.exit_code == 0, res.output
    cks = conv_committee["checkpoints"]
    run = out / "d"
    res = runner.invoke(app, ["train", *voltage_data, "--out", str(run), "--preset", "conv", "--epochs", "20",
                              "--lr", "2e-3", "--threads", "1", "--seed", "3", "--test-ids", TEST_ID,
                              "--distill-weight", "1",
                              "--init", cks[0], "--teacher", cks[0], "--teacher", cks[1],
                              "--transfer", str(transfer)])
    assert res.exit_code == 0, res.output
    assert "21 unlabelled transfer frames" in res.output and "the spread head from scratch" in res.output
    path = out / "d.onnx"
    calib = [a for d in voltage_data for a in ("--calibrate", d)]
    res = runner.invoke(app, ["export", str(run / "model.pt"), "--out", str(path), *calib,
                              "--spread-target", "10"])
    assert res.exit_code == 0 and "distilled from a committee" in res.output, res.output
    return {"checkpoint": run / "model.pt", "path": path, "transfer": transfer}


def test_distilled_network_learns_the_committee(distilled, conv_committee, voltage_data):
    """Provenance names the teacher by sha256; the student's force is closer to the committee's mean and its
    spread head closer to the committee's per-site std (log) than the best constant (it learned where the
    members disagree)."""
    from neqforce.hashing import sha256_file
    from neqforce.training.checkpoint import load_model, read_checkpoint
    from neqforce.training.conv_train import SPREAD_FLOOR, load_teacher, teacher_targets, transfer_frames
    from neqforce.training.data import frame_groups, qualify_ids
    from neqforce.training.dataset import load_dataset

    ck = read_checkpoint(distilled["checkpoint"])
    cks = conv_committee["checkpoints"]
    assert ck["config"]["spread_head"] is True
    assert ck["teacher"]["sha256"] == [sha256_file(c) for c in cks]
    assert ck["teacher"]["transfer"] == [str(distilled["transfer"])]
    student, _ = load_model(distilled["checkpoint"])
    start, _ = load_model(cks[0])
    teacher = load_teacher(cks, student_params := HolsteinParams())
    frames = frame_groups(qualify_ids(load_dataset(voltage_data)))
    frames += transfer_frames([str(distilled["transfer"])], student_params)
    force_gap, start_gap, spread_gap, start_spread_gap = [], [], [], []
    with torch.no_grad():
        for fr in frames:
            mean, std = teacher_targets(teacher, fr.q, fr.voltage)
            q, v = torch.from_numpy(fr.q), torch.from_numpy(fr.voltage)
            force_gap.append(float(((student.electronic(q, v).numpy() - mean) ** 2).mean()))
            start_gap.append(float(((start.electronic(q, v).numpy() - mean) ** 2).mean()))
            floor = SPREAD_FLOOR * float(student.y_std)
            pred = student.member_std(q, v).numpy()
            spread_gap.append(float(((np.log(pred + floor) - np.log(std + floor)) ** 2).mean()))
            constant = np.median(std)  # the best guess that knows no configuration
            start_spread_gap.append(float(((np.log(constant + floor) - np.log(std + floor)) ** 2).mean()))
    assert np.mean(force_gap) < np.mean(start_gap)
    assert np.mean(spread_gap) < 0.8 * np.mean(start_spread_gap)


def test_distilled_network_exports_and_serves_with_a_spread(distilled):
    from neqforce.training.export import read_metadata

    path = distilled["path"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["force", "density", "force_std"]
    com = json.loads(read_metadata(path)["neqforce.committee"])
    assert com["members"] == 1 and com["spread_threshold"] > 0
    assert com["distilled_from"]["members"] and "distilled" in com["spread_definition"]
    res = _served_like_ort(path, np.random.default_rng(4).normal(0, 1.0, (10, 6)), 2.75)
    assert res.force_std_max > 0


def test_distillation_refuses_bad_options(conv_committee, voltage_data, tmp_path):
    cks = conv_committee["checkpoints"]
    base = ["train", *voltage_data, "--out", str(tmp_path / "x"), "--epochs", "1", "--threads", "1",
            "--test-ids", TEST_ID]
    for extra, said in ((["--preset", "conv", "--transfer", str(tmp_path)], "need a --teacher"),
                        (["--preset", "conv", "--teacher", cks[0]], "two or more"),
                        (["--preset", "conv", "--teacher", cks[0], "--teacher", str(tmp_path / "no.pt")],
                         "no such file"),
                        (["--preset", "compact", "--teacher", cks[0], "--teacher", cks[1]],
                         "need a convolutional preset"),
                        (["--preset", "gconv", "--teacher", cks[0], "--teacher", cks[1]], "mirror-averaged")):
        res = CliRunner().invoke(app, base + extra)
        assert res.exit_code == 2 and said in res.output, (extra, res.output)
        assert "Traceback" not in res.output


@pytest.mark.parametrize("preset", ["conv", "compact"])
def test_a_wrong_init_fails_before_the_data_load(preset, tmp_path):
    """A missing --init is named at once, before any dataset is read (here there is none to read)."""
    res = CliRunner().invoke(app, ["train", str(tmp_path / "no_data"), "--out", str(tmp_path / "x"),
                                   "--preset", preset, "--init", str(tmp_path / "none.pt")])
    assert res.exit_code == 2 and "--init" in res.output and "no such file" in res.output, res.output


def test_a_committee_of_distilled_networks_uses_the_members_std(distilled, conv_committee, tmp_path):
    """Distilled networks exported together are a plain committee: force = their mean, force_std = the
    local spread of their std (the heads unused), checked against torch by the export itself."""
    res = CliRunner().invoke(app, ["export", str(distilled["checkpoint"]), conv_committee["checkpoints"][1],
                                   "--out", str(tmp_path / "c.onnx")])
    assert res.exit_code == 0 and "committee of 2" in res.output, res.output
    from neqforce.training.checkpoint import load_model
    from neqforce.training.model import EnsembleForceModel, local_spread

    members = [load_model(distilled["checkpoint"])[0], load_model(conv_committee["checkpoints"][1])[0]]
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    q, v = _q((2, 9, 6), seed=8), np.array([2.6, 3.4], np.float32)
    f, _, s = sess.run(None, {"q": q.numpy(), "voltage": v})
    with torch.no_grad():
        each = EnsembleForceModel(members).member_electronic(q, torch.from_numpy(v))
        np.testing.assert_allclose(s, local_spread(each.std(0, unbiased=False)).numpy(), atol=2e-6)
        np.testing.assert_allclose(f, (each.mean(0) + members[0].elastic(q)).numpy(), atol=2e-5)
