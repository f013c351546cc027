"""Run metrics of ξ(t) (:mod:`neqforce.physics.domain_wall`): the one implementation behind
``neqforce sweep``, ``bench/compare_dynamics.py`` and ``bench/operating_point.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neqforce.physics.domain_wall import fit_wall_speed, nucleation_time, run_metrics, time_to_xi

LX = 20


def _wall(speed: float, t_nuc: float, n: int = 400, dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A wall entering at t_nuc and moving at ``speed`` columns per unit time (counts of columns / lx)."""
    t = np.arange(n) * dt
    columns = np.clip(np.floor(speed * (t - t_nuc)) + 1, 0, LX)
    columns[t < t_nuc] = 0
    return t, columns / LX


def test_constant_speed_wall_is_measured():
    t, xi = _wall(speed=0.5, t_nuc=3.0)
    m = run_metrics(t, xi, LX)
    assert m.t_nuc == pytest.approx(3.0)
    assert m.speed == pytest.approx(0.5, rel=0.02)
    assert m.speed_err < 0.01
    # ξ = 0.5 is 10 columns: floor(0.5 (t - 3)) + 1 >= 10 first at t = 21
    assert m.t_xi50 == pytest.approx(21.0) and m.t_xi90 == pytest.approx(37.0)
    assert m.final_xi == 19 / LX and m.nucleated and m.switched and m.window == (0.2, 0.8)


def test_pinned_edge_columns_nucleate_but_do_not_switch():
    t = np.arange(300) * 0.1
    xi = np.where(t > 2.0, 2 / LX, 0.0)
    xi[40] = 0.0  # one late fluctuation back to insulating: nucleation is after it
    m = run_metrics(t, xi, LX)
    assert m.t_nuc == pytest.approx(t[41])
    assert m.nucleated and not m.switched
    assert math.isnan(m.speed) and math.isnan(m.t_xi50) and math.isnan(m.t_xi90)


def test_no_nucleation_and_empty_series():
    t = np.arange(50) * 0.1
    xi = np.zeros(50)
    xi[10:20] = 1 / LX  # a column melts and recovers
    assert math.isnan(nucleation_time(t, xi, LX))
    assert not run_metrics(t, xi, LX).nucleated
    assert math.isnan(run_metrics(np.zeros(0), np.zeros(0), LX).final_xi)


def test_speed_window_is_contiguous_and_stated():
    t, xi = _wall(speed=1.0, t_nuc=0.0)
    fit = fit_wall_speed(t, xi, LX, window=(3 / LX, 14 / LX), min_points=11)
    assert fit.closed and fit.window == (3 / LX, 14 / LX)
    assert fit.n_points == np.flatnonzero(xi * LX >= 14)[0] - np.flatnonzero(xi * LX >= 3)[0] + 1
    assert fit.speed == pytest.approx(1.0, rel=0.02)
    # a wall that stops at 12 columns: the window stays open, fitted to the last sample
    t2, xi2 = t, np.minimum(xi, 12 / LX)
    assert not fit_wall_speed(t2, xi2, LX, window=(3 / LX, 14 / LX)).closed
    with pytest.raises(ValueError, match="window"):
        fit_wall_speed(t, xi, LX, window=(0.8, 0.2))


def test_time_to_xi_counts_columns():
    t = np.arange(5.0)
    xi = np.array([0, 1, 2, 3, 3]) / 3 * (25 / 30)  # rounding-prone fractions of lx = 30
    assert time_to_xi(t, xi * 30 / 30, 25 / 30, 30) == 3.0
    assert math.isnan(time_to_xi(t, xi, 0.9, 30))


def test_threshold_crossing_of_the_switched_fraction():
    from neqforce.client.sweep_summary import mean_sem, threshold

    assert threshold([2.0, 2.5, 3.0], [0.0, 0.25, 1.0]) == (pytest.approx(2.5 + 0.25 / 0.75 * 0.5),
                                                            "2.67")
    assert threshold([2.0, 2.5], [0.5, 1.0])[1] == "at or below 2"
    assert threshold([2.0, 2.5], [0.0, 0.375])[1] == "above 2.5"
    mean, sem, n = mean_sem([1.0, 2.0, float("nan"), 3.0])
    assert (mean, n) == (2.0, 3) and sem == pytest.approx(1 / math.sqrt(3))


@pytest.mark.parametrize("lx", [28, 30, 1000])
def test_metrics_do_not_depend_on_float32_rounding_of_xi(lx):
    """ξ = k/lx stored in float32 (27/30 -> 0.89999998) gives the float64 series' metrics: the levels are
    column counts, not the last bits of ξ."""
    rng = np.random.default_rng(lx)
    step = max(3, lx // 100)
    counts = np.minimum(np.cumsum(rng.integers(0, step, 400)), lx)  # a wall crossing the device
    counts[:5] = 0
    t = 0.1 * np.arange(counts.size)
    xi64 = counts / lx
    xi32 = xi64.astype(np.float32).astype(np.float64)
    assert not np.array_equal(xi32, xi64)  # the rounding is there
    a, b = run_metrics(t, xi64, lx), run_metrics(t, xi32, lx)
    for q in ("t_nuc", "speed", "t_xi50", "t_xi90"):
        x, y = getattr(a, q), getattr(b, q)
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-6), (q, x, y)
    assert counts[-1] == lx and math.isfinite(a.t_xi90)
    for level in (0.1, 0.3, 0.7, 0.9, 27 / 30):
        assert time_to_xi(t, xi32, level, lx) == time_to_xi(t, xi64, level, lx)
        assert time_to_xi(t, xi32, level) == time_to_xi(t, xi64, level)
