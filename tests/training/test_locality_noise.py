"""The far perturbations of bench/locality_response.py change what they say and nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "locality_response.py"
_spec = importlib.util.spec_from_file_location("locality_response", _PATH)
locality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locality)

LX, LY = 30, 28
STAG = 1 - 2 * ((np.arange(LX)[:, None] + np.arange(LY)[None, :]) % 2)


@pytest.fixture
def frame() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    q = 1.2 * STAG + 0.3 * rng.standard_normal((LX, LY))  # a thermal CDW
    return q, np.abs(np.arange(LX) - 10) > 8


@pytest.mark.parametrize("noise", locality.NOISES)
def test_near_columns_are_untouched(frame, noise: str) -> None:
    q, far = frame
    p = locality.far_perturbation(q, far, 0.3, noise, np.random.default_rng(0))
    assert np.array_equal(p[~far], q[~far])
    assert not np.allclose(p[far], q[far])


def test_permute_keeps_every_column_mean_and_value(frame) -> None:
    q, far = frame
    p = locality.far_perturbation(q, far, 0.0, "permute", np.random.default_rng(1))
    np.testing.assert_allclose(p.mean(1), q.mean(1), atol=1e-12)
    np.testing.assert_allclose((p * STAG).mean(1), (q * STAG).mean(1), atol=1e-12)
    for parity in (0, 1):  # values stay on their sublattice rows of the same column
        rows = slice(parity, LY, 2)
        assert np.array_equal(np.sort(p[:, rows], 1), np.sort(q[:, rows], 1))


def test_column_noise_moves_column_means_only(frame) -> None:
    q, far = frame
    col = locality.far_perturbation(q, far, 0.3, "column", np.random.default_rng(2)) - q
    stag = locality.far_perturbation(q, far, 0.3, "staggered", np.random.default_rng(2)) - q
    assert np.allclose(col, col[:, :1])  # the same shift on every site of a column (k_y = 0)
    assert np.allclose(stag * STAG, (stag * STAG)[:, :1])  # one staggered amplitude per column
    np.testing.assert_allclose(stag.mean(1), 0.0, atol=1e-12)  # the column mean of Q kept


def test_unknown_noise_is_refused(frame) -> None:
    q, far = frame
    with pytest.raises(ValueError, match="unknown noise"):
        locality.far_perturbation(q, far, 0.3, "pink", np.random.default_rng(0))
