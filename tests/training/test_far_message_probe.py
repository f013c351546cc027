"""bench/far_message.py finds a planted far-site signal: a residual that depends on one feature of the
site 10 columns away is predicted out of sample by the stage with reach 12, not by its nearest-column
control."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[2] / "bench" / "far_message.py"
_spec = importlib.util.spec_from_file_location("far_message", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

LX, LY, NH, FRAMES = 30, 8, 4, 160


def synthetic_cache(path: Path) -> None:
    """h random; F̂ = 0; F = 0.5 tanh(h[x + 10, y, 0]) (0 where x + 10 is outside the device)."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((FRAMES, LX, LY, NH)).astype(np.float32)
    force = np.zeros((FRAMES, LX, LY), np.float32)
    force[:, :-10] = 0.5 * np.tanh(h[:, 10:, :, 0])
    hold = np.arange(FRAMES) % 5 == 4
    np.savez(path, g0_h=h.astype(np.float16), g0_fhat=np.zeros_like(force), g0_force=force,
             g0_voltage=np.full(FRAMES, 3.0, np.float32), g0_hold=hold, g0_block=hold)


def fitted(cache: Path, reach: int, out: Path) -> dict:
    args = argparse.Namespace(cache=cache, reach=reach, channels=4, rows=0, epochs=25, lr=1e-2, sites=2048,
                              seed=0, threads=1, out=out)
    probe.fit(args)
    return json.loads(out.read_text())["groups"][f"{LX}x{LY}"]["held V=all"]


def test_far_stage_recovers_a_planted_far_signal_and_the_local_control_does_not(tmp_path):
    cache = tmp_path / "cache.npz"
    synthetic_cache(cache)
    far = fitted(cache, 12, tmp_path / "d12.json")
    near = fitted(cache, 1, tmp_path / "d1.json")
    assert far["committee"] == near["committee"] > 0
    assert far["with_stage"] < 0.2 * far["committee"]  # the signal is found 10 columns away
    assert near["with_stage"] > 0.8 * near["committee"]  # and cannot be seen from the nearest column
