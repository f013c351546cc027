"""client/cost.py: projected wall time and the NEGF refusal."""

from __future__ import annotations

import pytest

from neqforce.client.cost import (
    COST_LIMIT_S,
    format_duration,
    project_cost,
    refusal_message,
    refuse,
    timed,
)


def test_projection_and_refusal():
    p = project_cost("negf", first_step_s=95.0, steps=2000)
    assert p.total_s == pytest.approx(190000.0)
    assert p.exceeds() and COST_LIMIT_S == 1800
    assert refuse(p, requested="auto")
    assert not refuse(p, requested="negf")  # insisted
    assert not refuse(project_cost("onnx", 95.0, 2000), requested="auto")  # ML never refused
    assert not refuse(project_cost("negf", 0.5, 600), requested="auto")  # 5 min: fine
    msg = refusal_message(p, lattice=(60, 56))
    assert "\n" not in msg
    for option in ("--backend negf", "--steps", "--lx", "--model", "60×56", "2.2 days"):
        assert option in msg, option


def test_replicas_in_rounds():
    assert project_cost("negf", 1.0, 100, replicas=8, parallel=2).total_s == pytest.approx(400.0)
    assert project_cost("negf", 1.0, 100, replicas=1, parallel=4).total_s == pytest.approx(100.0)


def test_bad_time_and_helpers():
    with pytest.raises(ValueError):
        project_cost("negf", float("nan"), 10)
    assert format_duration(30) == "30.0 s" and format_duration(600) == "10.0 min"
    assert format_duration(0.0123) == "12 ms"
    assert format_duration(3 * 3600) == "3.0 h" and format_duration(float("inf")) == "?"
    value, seconds = timed(sum, [1, 2, 3])
    assert value == 6 and seconds >= 0
