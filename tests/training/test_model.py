"""Force model battery (NequIP-style): symmetry, locality, batching, folded == reference == NumPy."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from neqforce.physics import HolsteinParams, elastic_force  # noqa: E402
from neqforce.training import descriptors as D  # noqa: E402
from neqforce.training.folded import FoldedForceModel  # noqa: E402


def _forces(model, q: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(q, dtype=np.float32)))[0].numpy().astype(np.float64)


def _numpy_forward(model, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: NumPy descriptor + the model's weights, written out layer by layer."""
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    cfg = model.config
    act = {"silu": lambda z: z / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0),
           "tanh": np.tanh}[cfg.activation]
    s, a = D.features(q, cfg.descriptor)
    s = (s - sd["s_mean"]) / sd["s_std"]
    if "net.anti_proj.weight" in sd:
        u = (a / sd["a_std"]) @ sd["net.anti_proj.weight"].T
        s = np.concatenate([s, u * u], axis=-1)
    z = s @ sd["net.first.weight"].T + sd["net.first.bias"]
    if "net.first_anti.weight" in sd:
        za = (a / sd["a_std"]) @ sd["net.first_anti.weight"].T
        h = act(z + za) + act(z - za)
    else:
        h = act(z)
    layers = sorted({k.split(".")[2] for k in sd if k.startswith("net.rest.")}, key=int)
    for i, layer in enumerate(layers):
        h = h @ sd[f"net.rest.{layer}.weight"].T + sd[f"net.rest.{layer}.bias"]
        if i < len(layers) - 1:
            h = act(h)
    el = h[..., 0] * sd["y_std"] + sd["y_mean"]
    p = HolsteinParams(lx=q.shape[-2], ly=q.shape[-1])
    return el + elastic_force(q, p), 0.5 + el / p.g


@pytest.mark.parametrize("descriptor,activation,rank", [("device", "silu", 0), ("paper", "relu", 0),
                                                        ("paper+elec", "tanh", 0), ("device", "relu", 5)])
@pytest.mark.parametrize("shape", [(2, 13, 10), (1, 8, 6), (1, 6, 1), (1, 7, 3)])
def test_torch_and_folded_models_equal_numpy_reference(random_model, cdw_like, descriptor, activation, rank,
                                                       shape):
    model = random_model(descriptor, hidden=(24, 12, 8), activation=activation, anti_rank=rank)
    q = cdw_like(shape, seed=1)
    f_ref, n_ref = _numpy_forward(model, q)
    f_t = _forces(model, q)
    np.testing.assert_allclose(f_t, f_ref, atol=2e-5)
    folded = FoldedForceModel(model).eval()
    with torch.no_grad():
        f_f, n_f = folded(torch.from_numpy(q.astype(np.float32)))
    np.testing.assert_allclose(f_f.numpy(), f_ref, atol=2e-5)
    np.testing.assert_allclose(n_f.numpy(), n_ref, atol=2e-5)


@pytest.mark.parametrize("descriptor,rank", [("device", 0), ("paper", 0), ("device", 4)])
def test_force_field_of_mirrored_lattice_is_mirrored(random_model, cdw_like, descriptor, rank):
    model = random_model(descriptor, anti_rank=rank)
    folded = FoldedForceModel(model).eval()
    q = cdw_like((1, 14, 11), seed=2)[0]
    for y0 in (0, 4):
        qm = D.mirror_about(q, y0)
        for m in (model, folded):
            f, fm = _forces(m, q[None])[0], _forces(m, qm[None])[0]
            np.testing.assert_allclose(fm, D.mirror_about(f, y0), atol=1e-5)


def test_symmetrized_first_layer_is_what_makes_it_invariant(random_model, cdw_like):
    """Control: the A'' block alone (without the C_s average) would break the mirror symmetry."""
    model = random_model("device")
    q = cdw_like((1, 14, 11), seed=3)[0]
    qm = D.mirror_about(q, 0)
    with torch.no_grad():
        s, a = model.descriptor(torch.from_numpy(np.stack([q, qm]).astype(np.float32)))
        z = model.net.first(s) + model.net.first_anti(a)  # one branch only
    zm_mirrored = z[1].numpy()[:, (-np.arange(11)) % 11]
    assert not np.allclose(z[0].numpy(), zm_mirrored, atol=1e-3)


def test_y_translation_equivariance(random_model, cdw_like):
    model = random_model("device")
    q = cdw_like((1, 12, 9), seed=4)[0]
    f = _forces(model, q[None])[0]
    fs = _forces(model, np.roll(q, 3, axis=1)[None])[0]
    np.testing.assert_allclose(fs, np.roll(f, 3, axis=1), atol=1e-5)


def test_locality_cutoff(random_model, cdw_like):
    """Changing Q at distance > r_c changes neither the electronic force nor the density of a site."""
    model = random_model("device")
    q = cdw_like((1, 20, 20), seed=5)[0]
    x0, y0 = 10, 10
    base = _forces(model, q[None])[0]
    el_base = base - elastic_force(q, HolsteinParams(lx=20, ly=20))
    far = q.copy()
    far[17, 10] += 1.0  # distance 7 > 6
    far[10, 3] -= 1.0  # distance 7 (in y)
    f_far = _forces(model, far[None])[0]
    assert abs(f_far[x0, y0] - base[x0, y0]) < 1e-5
    near = q.copy()
    near[16, 10] += 1.0  # distance 6: inside the cutoff
    el_near = _forces(model, near[None])[0] - elastic_force(near, HolsteinParams(lx=20, ly=20))
    assert abs(el_near[x0, y0] - el_base[x0, y0]) > 1e-6


def test_batch_equals_loop_and_float64_agrees(random_model, cdw_like):
    model = random_model("device")
    q = cdw_like((4, 9, 7), seed=6)
    batch = _forces(model, q)
    loop = np.stack([_forces(model, qi[None])[0] for qi in q])
    np.testing.assert_allclose(batch, loop, atol=1e-6)
    with torch.no_grad():
        f64 = model.double()(torch.from_numpy(q))[0].numpy()
    np.testing.assert_allclose(batch, f64, atol=1e-5)


def test_elastic_part_is_exact(random_model, cdw_like):
    """With the network's output zeroed the model returns -k Q - kappa Σ_nn Q and n = 1/2."""
    model = random_model("device")
    with torch.no_grad():
        last = model.net.rest[-1]
        last.weight.zero_()
        last.bias.zero_()
        model.y_mean.zero_()
    for shape in [(1, 8, 6), (1, 5, 1), (1, 4, 2)]:
        q = cdw_like(shape, seed=7)
        with torch.no_grad():
            f, n = model(torch.from_numpy(q.astype(np.float32)))
        p = HolsteinParams(lx=shape[1], ly=shape[2])
        np.testing.assert_allclose(f.numpy()[0], elastic_force(q[0], p), atol=1e-5)
        np.testing.assert_allclose(n.numpy(), 0.5, atol=1e-7)


def test_paper_preset_is_table_one():
    from neqforce.training.model import PRESETS, build_model

    cfg = PRESETS["paper"]
    assert cfg.hidden == (4096, 2048, 1024, 512, 256, 128, 64, 64) and cfg.activation == "relu"
    assert abs(cfg.macs_per_site() - 11.65e6) < 0.01e6  # the paper's 11.6 M multiply-adds
    model = build_model(cfg, HolsteinParams().physical())
    widths = [m.in_features for m in [model.net.first, *[r for r in model.net.rest
                                                           if isinstance(r, torch.nn.Linear)]]]
    assert widths == [113, 4096, 2048, 1024, 512, 256, 128, 64, 64]
