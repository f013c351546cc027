"""bench/voltage_dynamics.py's NEGF ξ record: it round-trips, and the committed record reproduces the
committed comparison's NEGF side through the library metrics (so a rerun from a fresh clone compares the
model against the same NEGF-BD runs)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("voltage_dynamics", ROOT / "bench" / "voltage_dynamics.py")
vd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vd)


def test_record_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    runs = [{"voltage": v, "seed": s, "lx": 30, "ly": 28, "dt": 0.1, "steps": n,
             "xi": np.clip(np.cumsum(rng.uniform(0, 0.01, n + 1)), 0, 1)}
            for v, s, n in ((3.0, 7, 400), (3.5, 8, 250))]
    path = tmp_path / "r.npz"
    vd.save_negf_xi(path, runs)
    back = vd.negf_runs([path])
    assert len(back) == 2
    for a, b in zip(runs, back, strict=True):
        assert {k: a[k] for k in a if k != "xi"} == {k: b[k] for k in b if k != "xi"}
        np.testing.assert_array_equal(a["xi"], b["xi"])


def test_committed_record_gives_the_committed_negf_side():
    record = ROOT / "docs" / "figures" / "voltage_dynamics_0.7_negf_xi.npz"
    table = json.loads((ROOT / "docs" / "figures" / "voltage_dynamics_0.7.json").read_text())
    runs = vd.negf_runs([record])
    assert len(runs) == 32 and {r["seed"] for r in runs} == set(range(1004, 1010))
    by_v: dict[str, list] = {}
    for r in runs:
        by_v.setdefault(str(r["voltage"]), []).append(vd.run_metrics_of(r))
    for v, rows in by_v.items():
        for q in vd.QUANTITIES:
            want = table[v][q]["negf"]
            got = [m[q] for m in rows]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert (math.isnan(g) and math.isnan(w)) or g == w, (v, q, got, want)


def test_committed_record_holds_exact_column_fractions():
    """ξ = k/lx exactly (SPEC §5). A record built from runs unpacked before the pack restored ξ held
    float32-rounded values (27/30 -> 0.89999998), which put t(ξ = 0.9) of seeds 1004/1005 one column late."""
    for r in vd.negf_runs([ROOT / "docs" / "figures" / "voltage_dynamics_0.7_negf_xi.npz"]):
        k = r["xi"] * r["lx"]
        np.testing.assert_array_equal(r["xi"], np.round(k) / r["lx"])
