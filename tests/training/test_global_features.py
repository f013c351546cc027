"""Voltage-range model parts: global features (V, metallic runs) against a loop reference, their symmetry,
the voltage input through torch / folded / ONNX, the committee spread output, the threshold calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, local_order  # noqa: E402
from neqforce.training import descriptors as D  # noqa: E402
from neqforce.training.calibration import spread_threshold  # noqa: E402
from neqforce.training.export import export_onnx, onnx_feeds  # noqa: E402
from neqforce.training.global_features import SOFT_WIDTH, GlobalFeatures  # noqa: E402
from neqforce.training.model import EnsembleForceModel, ModelConfig, build_model  # noqa: E402

Q0 = bulk_cdw_amplitude(HolsteinParams())


def metal_left(lx: int, ly: int, w: int, seed: int = 0, right: int = 0) -> np.ndarray:
    """The nonlocality study's configuration: w metallic columns at the left electrode (Q = -0.35 +
    noise), ``right`` at the right one, the rest the bulk CDW ±q0."""
    rng = np.random.default_rng(seed)
    x, y = np.arange(lx)[:, None], np.arange(ly)[None, :]
    q = Q0 * (-1.0) ** (x + y) + 0.05 * rng.standard_normal((lx, ly))
    metal = (x < w) | (x >= lx - right)
    return np.where(np.broadcast_to(metal, (lx, ly)), -0.35 + 0.05 * rng.standard_normal((lx, ly)), q)


def reference_globals(q: np.ndarray, v: float) -> np.ndarray:
    """Per-column features by explicit loops over columns (float64), as documented in global_features."""
    lx = q.shape[0]
    m = np.abs(local_order(q)).mean(axis=1)
    c = 1.0 / (1.0 + np.exp(-(Q0 / 2 - m) / (SOFT_WIDTH * Q0)))
    p = np.array([np.prod(c[:x + 1]) for x in range(lx)])
    r = np.array([np.prod(c[x:]) for x in range(lx)])
    ll, lr = p.sum(), r.sum()
    return np.stack([np.full(lx, v), np.full(lx, ll), p, p * ll, np.full(lx, p[-1]), np.full(lx, lr), r,
                     r * lr], axis=1)


def voltage_model(seed: int = 0, hidden=(16, 8), r_cut: int = 4):
    torch.manual_seed(seed)
    cfg = ModelConfig(descriptor="paper+elec", hidden=hidden, r_cut=r_cut, global_features="voltage+metal")
    model = build_model(cfg, HolsteinParams().physical())
    with torch.no_grad():
        model.s_mean.uniform_(-0.5, 0.5)
        model.s_std.uniform_(0.5, 2.0)
        model.y_std.fill_(0.6)
        for p in model.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(("lx", "ly", "w", "right"),
                         [(20, 6, 7, 0), (12, 4, 0, 3), (10, 2, 10, 0), (9, 1, 4, 2)])
def test_global_features_match_the_loop_reference(lx, ly, w, right):
    q = metal_left(lx, ly, w, seed=lx, right=right)
    gf = GlobalFeatures("voltage+metal", Q0)
    got = gf(torch.from_numpy(q[None]).double(), torch.tensor([2.75], dtype=torch.float64))[0].numpy()
    np.testing.assert_allclose(got, reference_globals(q, 2.75), rtol=1e-5, atol=1e-9)  # q0 is float32
    if 0 < w < lx and not right:  # a clean metallic run of w columns at the left electrode: L_left = w
        assert abs(got[0, 1] - w) < 0.01 * w and got[0, 4] < 1e-3


def test_left_run_length_grows_with_the_metal_and_touchdown_is_seen():
    gf = GlobalFeatures("voltage+metal", Q0)
    lengths = [float(gf(torch.from_numpy(metal_left(40, 6, w)[None]), torch.tensor([3.0]))[0, 0, 1])
               for w in (5, 15, 30)]
    assert lengths == pytest.approx([5, 15, 30], rel=0.01)
    whole = gf(torch.from_numpy(metal_left(40, 6, 40)[None]), torch.tensor([3.0]))[0]
    assert float(whole[0, 4]) > 0.95  # the left metal reaches the right electrode


def test_global_features_are_mirror_and_y_translation_invariant():
    gf = GlobalFeatures("voltage+metal", Q0)
    q = metal_left(16, 8, 6, seed=3)
    ref = gf(torch.from_numpy(q[None]), torch.tensor([3.0]))
    for other in (D.mirror_about(q, 2), np.roll(q, 3, axis=1)):
        got = gf(torch.from_numpy(np.ascontiguousarray(other)[None]), torch.tensor([3.0]))
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_voltage_model_onnx_matches_torch_and_the_voltage_changes_the_answer(tmp_path, cdw_like):
    model = voltage_model()
    path, err = export_onnx(model, tmp_path / "v.onnx", {"neqforce.params": json.dumps({"voltage": 3.0})})
    assert err <= 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, len(i.shape)) for i in sess.get_inputs()] == [("q", 3), ("voltage", 1)]
    assert [o.name for o in sess.get_outputs()] == ["force", "density"]
    q = np.concatenate([cdw_like((2, 14, 6), seed=1), metal_left(14, 6, 8)[None]]).astype(np.float32)
    v = np.array([2.0, 3.0, 4.0], np.float32)
    f, n = sess.run(["force", "density"], {"q": q, "voltage": v})
    with torch.no_grad():
        tf, tn = model(torch.from_numpy(q), torch.from_numpy(v))
    np.testing.assert_allclose(f, tf.numpy(), atol=1e-5)
    np.testing.assert_allclose(n, tn.numpy(), atol=1e-5)
    f2 = sess.run(["force"], onnx_feeds(sess, q, 2.5))[0]
    assert np.abs(f2 - f).max() > 1e-3  # the voltage is an input that matters
    with pytest.raises(ValueError, match="voltage"):
        onnx_feeds(sess, q, None)
    # mirror and y-translation equivariance of the whole graph, global inputs included
    fm = sess.run(["force"], {"q": D.mirror_about(q[2], 1)[None].copy(), "voltage": v[2:]})[0][0]
    np.testing.assert_allclose(fm, D.mirror_about(f[2], 1), atol=1e-5)


def test_committee_force_std_is_the_local_spread_of_its_members(tmp_path, cdw_like):
    members = [voltage_model(seed=s) for s in (0, 1, 2)]
    meta = {"neqforce.params": json.dumps({"voltage": 3.0})}
    path, err = export_onnx(EnsembleForceModel(members), tmp_path / "c.onnx", meta)
    assert err <= 1e-5
    member_paths = [export_onnx(m, tmp_path / f"m{i}.onnx", meta)[0] for i, m in enumerate(members)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["force", "density", "force_std"]
    q = cdw_like((2, 12, 6), seed=5).astype(np.float32)
    v = np.array([2.5, 3.5], np.float32)
    force, _, std = sess.run(None, {"q": q, "voltage": v})
    outs = np.stack([ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        ["force"], {"q": q, "voltage": v})[0] for p in member_paths])
    np.testing.assert_allclose(force, outs.mean(0), atol=1e-5)
    # the members' std (ddof 0, force units), its variance averaged over same-sublattice neighbours
    # (local_spread, checked against a site-by-site reference in test_committee_spread.py)
    from neqforce.training.model import local_spread

    expected = local_spread(torch.from_numpy(outs.astype(np.float64).std(0))).numpy()
    np.testing.assert_allclose(std, expected, atol=1e-5)
    assert std.min() >= 0 and std.max() > 1e-3


def test_spread_threshold_is_where_the_error_exceeds_the_target():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 1, 20000)
    error = np.abs(rng.normal(0, 0.1 * spread))  # RMSE in a bin ~ 0.1 * its spread
    rec = spread_threshold(spread, error, target_rmse=0.05, bins=20)
    assert rec["threshold_rule"].startswith("lower spread edge")
    assert 0.4 < rec["spread_threshold"] < 0.6  # 0.1 * s > 0.05 from s = 0.5 on
    assert rec["spearman_sites"] > 0.5
    loose = spread_threshold(spread, error, target_rmse=10.0)
    assert loose["spread_threshold"] == pytest.approx(spread.max()) and "no bin" in loose["threshold_rule"]
    with pytest.raises(ValueError):
        spread_threshold(np.ones(3), np.ones(4))


def test_frame_threshold_is_on_the_largest_site_spread_of_a_lattice():
    """The server compares a lattice's largest per-site spread with the threshold, so it is calibrated on
    (largest spread, RMSE) per frame: frames with s_f > 0.5 have RMSE 0.1 > target 0.05."""
    from neqforce.training.calibration import frame_spread_threshold

    rng = np.random.default_rng(1)
    s = rng.uniform(0.0, 1.0, 400)
    e = np.where(s > 0.5, 0.1, 0.01) * rng.uniform(0.9, 1.1, 400)
    rec = frame_spread_threshold(s, e, target_rmse=0.05, bins=10)
    assert 0.45 < rec["spread_threshold"] < 0.65 and rec["threshold_rule"].startswith("frames: lower edge")
    assert rec["spearman_frames"] > 0.5 and rec["n_frames"] == 400
    loose = frame_spread_threshold(s, e, target_rmse=1.0)
    assert loose["spread_threshold"] == pytest.approx(s.max()) and "no bin" in loose["threshold_rule"]
    with pytest.raises(ValueError, match="as many"):
        frame_spread_threshold(np.ones(3), np.ones(2))


def test_batch_invariant_copy_computes_the_same_features():
    """The export's copy (cumulative sums, rows padded for the transcendental functions) is the same
    function as the training one to float32 rounding, on lattices with and without metal."""
    from neqforce.training.global_features import GlobalFeatures

    rng = np.random.default_rng(4)
    for lx, ly in ((30, 28), (17, 9), (64, 4), (5, 1)):
        stag = (-1.0) ** (np.arange(lx)[:, None] + np.arange(ly)[None, :])
        metal = np.arange(lx)[None, :, None] < rng.integers(0, lx + 1, (6, 1, 1))
        q = np.where(metal, -0.35, 2.4 * stag) + 0.2 * rng.standard_normal((6, lx, ly))
        q = torch.from_numpy(q).float()
        v = torch.from_numpy(rng.uniform(2, 4, 6)).float()
        a = GlobalFeatures("voltage+metal", 2.3855)(q, v)
        b = GlobalFeatures("voltage+metal", 2.3855, batch_invariant=True)(q, v)
        torch.testing.assert_close(b, a, rtol=2e-6, atol=2e-5)


def test_export_marks_a_batch_invariant_committee_and_the_check_can_fail(tmp_path, monkeypatch):
    """A voltage committee is exported batch-invariant (every lattice of a batch gets the floats it gets
    alone, checked with ONNX Runtime at export and recorded in the metadata); the same graph with the
    training-time reductions (ReduceSum/ReduceMean, unpadded Log/Exp) is not, and the check says so."""
    from neqforce.server.backends.onnx import BATCH_INVARIANT_KEY
    from neqforce.training import global_features as G
    from neqforce.training.export import check_batch_invariance, export_onnx, read_metadata
    from neqforce.training.model import EnsembleForceModel, ModelConfig, build_model

    torch.manual_seed(0)
    members = []
    for _ in range(2):
        m = build_model(ModelConfig(descriptor="paper+elec", hidden=(16, 8), r_cut=6,
                                    global_features="voltage+metal"), HolsteinParams().physical())
        with torch.no_grad():
            for p in m.net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        members.append(m.eval())
    path, _ = export_onnx(EnsembleForceModel(members), tmp_path / "inv.onnx")
    assert read_metadata(path)[BATCH_INVARIANT_KEY] == "true"

    plain = G.GlobalFeatures.__init__

    def training_reductions(self, kind, q0, batch_invariant=False):
        plain(self, kind, q0, batch_invariant=False)

    monkeypatch.setattr(G.GlobalFeatures, "__init__", training_reductions)
    path2, _ = export_onnx(EnsembleForceModel(members), tmp_path / "plain.onnx")
    assert read_metadata(path2)[BATCH_INVARIANT_KEY] == "false"
    assert check_batch_invariance(path2) is False


def reference_range(q: np.ndarray) -> np.ndarray:
    """Long-range channel by explicit loops (float64): bin means of (M, qbar, D, I) over columns x + d,
    columns beyond an electrode counting 0 (training/global_features.py)."""
    from neqforce.training.global_features import RANGE_BINS

    lx = q.shape[0]
    m = local_order(q)
    stats = np.stack([np.abs(m).mean(1), q.mean(1), (m * m).mean(1) - m.mean(1) ** 2, np.ones(lx)], 1)
    bins = [(-b, -a) for a, b in RANGE_BINS] + list(RANGE_BINS)
    out = np.zeros((lx, 4 * len(bins)))
    for x in range(lx):
        for k, (lo, hi) in enumerate(bins):
            cols = [x + d for d in range(lo, hi + 1) if 0 <= x + d < lx]
            out[x, 4 * k:4 * k + 4] = stats[cols].sum(0) / (hi - lo + 1) if cols else 0.0
    return out


@pytest.mark.parametrize(("lx", "ly", "w"), [(30, 6, 12), (70, 4, 40), (9, 3, 2)])
def test_range_channel_matches_the_loop_reference_and_is_batch_invariant(lx, ly, w):
    q = metal_left(lx, ly, w, seed=lx)
    qt = torch.from_numpy(q[None]).double()
    got = GlobalFeatures("voltage+metal+range", Q0)(qt, torch.tensor([3.0], dtype=torch.float64))[0].numpy()
    assert got.shape == (lx, 56)
    np.testing.assert_allclose(got[:, :8], reference_globals(q, 3.0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got[:, 8:], reference_range(q), rtol=1e-9, atol=1e-12)
    inv = GlobalFeatures("voltage+metal+range", Q0, batch_invariant=True)
    torch.testing.assert_close(inv(qt.float(), torch.tensor([3.0])), torch.from_numpy(got[None]).float(),
                               rtol=1e-5, atol=2e-5)
    if lx > 47:  # a column 47+ columns from both electrodes would have I = 1 in every bin
        assert got[0, 8 + 3] == 0 and got[0, -1] == 1  # left bins beyond the electrode, right ones inside


def test_range_channel_is_mirror_and_y_translation_invariant():
    gf = GlobalFeatures("voltage+metal+range", Q0)
    q = metal_left(40, 8, 15, seed=5)
    ref = gf(torch.from_numpy(q[None]), torch.tensor([3.0]))
    for other in (D.mirror_about(q, 2), np.roll(q, 3, axis=1)):
        got = gf(torch.from_numpy(np.ascontiguousarray(other)[None]), torch.tensor([3.0]))
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_range_committee_exports_batch_invariant_and_matches_torch(tmp_path):
    """A committee with the long-range channel: ONNX equals torch, and the export's batch-invariance
    check (ONNX Runtime, dynamics-like lattices) passes."""
    from neqforce.server.backends.onnx import BATCH_INVARIANT_KEY
    from neqforce.training.export import read_metadata

    torch.manual_seed(1)
    members = []
    for _ in range(2):
        m = build_model(ModelConfig(descriptor="paper+elec", hidden=(16, 8), r_cut=4,
                                    global_features="voltage+metal+range"), HolsteinParams().physical())
        with torch.no_grad():
            for p in m.net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        members.append(m.eval())
    ens = EnsembleForceModel(members)
    path, err = export_onnx(ens, tmp_path / "range.onnx")
    assert err <= 1e-4 and read_metadata(path)[BATCH_INVARIANT_KEY] == "true"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q = np.stack([metal_left(60, 6, w, seed=w) for w in (5, 30, 55)]).astype(np.float32)
    v = np.array([2.5, 3.0, 3.5], np.float32)
    f = sess.run(["force"], {"q": q, "voltage": v})[0]
    with torch.no_grad():
        tf = ens(torch.from_numpy(q), torch.from_numpy(v))[0].numpy()
    np.testing.assert_allclose(f, tf, atol=1e-4)


def test_row_channel_prototype_is_mirror_and_translation_invariant_and_not_exported() -> None:
    """The per-site row channel (docs/nonlocality.md §7) keeps the model's symmetries; export refuses it."""
    from neqforce.training.folded import FoldedForceModel
    from neqforce.training.global_features import GlobalFeatures
    from neqforce.training.model import PRESETS, build_model

    lx, ly = 60, 28
    x, y = torch.arange(lx)[:, None], torch.arange(ly)[None]
    g = torch.Generator().manual_seed(3)
    q = (2.3 * (1 - 2 * ((x + y) % 2)) + 0.3 * torch.randn(lx, ly, generator=g, dtype=torch.float64))[None]
    gf = GlobalFeatures("voltage+metal+range+rows", 2.3855).double()
    f = gf.row_channel(q)
    assert f.shape == (1, lx, ly, 72) and (f[0, 30] != 0).any()
    assert torch.allclose(torch.roll(f, 1, 2), gf.row_channel(torch.roll(q, 1, 2)), atol=1e-12)
    mirror = (-torch.arange(ly)) % ly
    assert torch.allclose(f[:, :, mirror], gf.row_channel(q[:, :, mirror]), atol=1e-12)
    # a far column shuffled along y moves the row channel of a site 20 columns away, not its column means
    qs = q.clone()
    qs[0, 50] = q[0, 50, torch.roll(torch.arange(ly), 2)]
    assert not torch.allclose(gf.row_channel(qs)[0, 30], f[0, 30])
    model = build_model(PRESETS["rows"], {"g": 1.5, "k": 1.0, "kappa": 0.18, "voltage": 3.0})
    s, _ = model.features(q.float())
    assert s.shape[-1] == model.s_mean.shape[0]
    with pytest.raises(ValueError, match="not exportable"):
        FoldedForceModel(model)
