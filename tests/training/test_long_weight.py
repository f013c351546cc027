"""`neqforce train --weight-long`: the loss weight of the sites of lattices longer than the shortest one
lands on exactly those sites, in the order the training features are written."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from neqforce.physics import HolsteinParams  # noqa: E402
from neqforce.training.data import Frames, training_validation_mask  # noqa: E402
from neqforce.training.train import long_site_weights, split_features  # noqa: E402


def _group(lx: int, ly: int, n: int, label: float, seed: int) -> Frames:
    """n frames of a lx×ly lattice whose electronic force is the constant ``label`` (marks the group)."""
    rng = np.random.default_rng(seed)
    q = (0.6 * (-1.0) ** np.add.outer(np.arange(lx), np.arange(ly)) + 0.05 * rng.standard_normal((n, lx, ly)))
    e = np.full((n, lx, ly), label, np.float32)
    steps = np.arange(n) * 7  # spans validation blocks and training frames
    return Frames(q.astype(np.float32), e, e, steps, np.zeros(n, int), ["t"], HolsteinParams(lx=lx, ly=ly))


def test_long_sites_get_the_weight_in_the_written_order(random_model):
    groups = [_group(8, 6, 12, 1.0, 0), _group(12, 6, 9, 2.0, 1), _group(8, 6, 5, 1.0, 2),
              _group(10, 6, 7, 3.0, 3)]
    vmasks = [training_validation_mask(g.step) for g in groups]
    assert all(m.any() and not m.all() for m in vmasks)
    (_, _, y_tr), _ = split_features(random_model(), groups, vmasks, chunk=4)
    w = long_site_weights(groups, vmasks, 2.5)
    assert w.shape == y_tr.shape
    # sites of the 12- and 10-column lattices (labels 2, 3) carry the weight, the 8-column ones 1
    np.testing.assert_array_equal(w.numpy(), np.where(y_tr.numpy() > 1.5, 2.5, 1.0))
    n_long = sum(int((~m).sum()) * g.params.lx * g.params.ly for g, m in zip(groups, vmasks, strict=True)
                 if g.params.lx > 8)
    assert int((w == 2.5).sum()) == n_long
