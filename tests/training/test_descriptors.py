"""C_s descriptors (SPEC §6): counts, mirror invariance, wrap/padding, NumPy == torch."""

from __future__ import annotations

import numpy as np
import pytest

from neqforce.training import descriptors as D


def test_offsets_and_counts():
    off = D.offsets(6)
    assert len(off.line) == 13 and len(off.top) == 50 and len(off.bottom) == 50
    assert off.n_paper == 113
    assert D.n_features("paper") == (113, 0)
    assert D.n_features("device") == (125, 50)
    every = np.concatenate([off.line, off.top, off.bottom])
    assert len({tuple(o) for o in every}) == 113
    assert np.all((every**2).sum(1) <= 36)
    # all integer offsets of the disk are there (brute-force count)
    assert sum(1 for dx in range(-6, 7) for dy in range(-6, 7) if dx * dx + dy * dy <= 36) == 113
    assert np.array_equal(off.bottom, off.top * [1, -1])
    with pytest.raises(ValueError):
        D.n_features("nope")
    assert D.descriptor_name("paper") == D.PAPER_DESCRIPTOR
    assert D.descriptor_name("device") == D.DEVICE_DESCRIPTOR
    assert D.descriptor_name("paper+elec", 8) == "paper-cs197+elec16/1"
    assert D.offsets(8).n_paper == 197


def _brute_paper(q: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 113 features of one site written out from SPEC §6, independently of the vectorized code."""
    lx, ly = q.shape

    def val(dx, dy):
        xx = x + dx
        return q[xx, (y + dy) % ly] if 0 <= xx < lx else 0.0

    line = [val(dx, 0) for dx in range(-6, 7)]
    pairs = [(dx, dy) for dx in range(-6, 7) for dy in range(1, 7) if dx * dx + dy * dy <= 36]
    qt = np.mean([val(dx, dy) for dx, dy in pairs])
    qb = np.mean([val(dx, -dy) for dx, dy in pairs])
    sym = [val(dx, dy) + val(dx, -dy) for dx, dy in pairs]
    anti = [(val(dx, dy) - val(dx, -dy)) * (qt - qb) for dx, dy in pairs]
    return np.array(line + sym + anti)


@pytest.mark.parametrize("shape", [(30, 28), (8, 6), (13, 4), (5, 1)])
def test_paper_features_match_brute_force(shape):
    rng = np.random.default_rng(1)
    q = rng.normal(size=shape)
    f = D.paper_features(q)
    assert f.shape == (*shape, 113)
    lx, ly = shape
    for x, y in [(0, 0), (lx - 1, ly - 1), (lx // 2, ly // 3), (min(6, lx - 1), 0)]:
        np.testing.assert_allclose(f[x, y], _brute_paper(q, x, y), atol=1e-12)


@pytest.mark.parametrize("kind", ["paper", "device", "paper+elec"])
@pytest.mark.parametrize("site", [(15, 14), (15, 0), (2, 27), (29, 1)])  # includes the periodic wrap in y
def test_mirror_about_a_site_leaves_its_invariant_features_unchanged(kind, site):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(30, 28))
    x, y = site
    qm = D.mirror_about(q, y)
    assert not np.allclose(qm, q)
    inv, anti = D.features(q, kind)
    inv_m, anti_m = D.features(qm, kind)
    np.testing.assert_allclose(inv_m[x, y], inv[x, y], atol=1e-12)
    np.testing.assert_allclose(anti_m[x, y], -anti[x, y], atol=1e-12)  # A'' is odd
    # a generic site elsewhere does change (the test can fail)
    assert not np.allclose(inv_m[x, (y + 3) % 28], inv[x, (y + 3) % 28])


def test_y_translation_shifts_the_features():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(12, 9))
    inv, anti = D.device_features(q)
    inv_s, anti_s = D.device_features(np.roll(q, 4, axis=1))
    np.testing.assert_allclose(inv_s, np.roll(inv, 4, axis=1), atol=1e-12)
    np.testing.assert_allclose(anti_s, np.roll(anti, 4, axis=1), atol=1e-12)


def test_outside_the_lattice_reads_zero_and_electrode_one_hot():
    q = np.ones((10, 5))
    f = D.paper_features(q)
    off = D.offsets()
    # on-line features of the edge site x = 0: dx < 0 are outside (0), dx >= 0 inside (1)
    np.testing.assert_array_equal(f[0, 0, :13], (off.line[:, 0] >= 0).astype(float))
    e = D.electrode_features(10, 5)
    assert e.shape == (10, 5, 12)
    np.testing.assert_array_equal(e[0, 0], np.eye(12)[0])
    np.testing.assert_array_equal(e[9, 3], np.eye(12)[6])
    np.testing.assert_array_equal(e[4, 1], np.eye(12)[4] + np.eye(12)[6 + 5])  # both electrodes in reach
    assert not D.electrode_features(30, 2)[6:24].any()  # bulk columns: no electrode feature


@pytest.mark.parametrize("kind,r_cut", [("paper", 6), ("device", 6), ("paper+elec", 6), ("paper+elec", 8),
                                        ("device", 3)])
@pytest.mark.parametrize("shape", [(3, 8, 6), (1, 13, 10), (2, 7, 3), (1, 5, 1), (1, 4, 2)])
def test_torch_descriptor_equals_numpy_reference(kind, r_cut, shape):
    torch = pytest.importorskip("torch")
    from neqforce.training.model import Descriptor

    q = np.random.default_rng(4).normal(size=shape)
    inv, anti = D.features(q, kind, r_cut)
    t_inv, t_anti = Descriptor(kind, r_cut)(torch.from_numpy(q))
    np.testing.assert_allclose(t_inv.numpy(), inv, atol=1e-12)
    np.testing.assert_allclose(t_anti.numpy(), anti, atol=1e-12)
