"""Benchmark: what the voltage-range model's extras cost — global inputs (V, metallic runs) and the
committee spread output — against the same network without them (the bundled model's architecture).

    python bench/voltage_model_cost.py                 # 2 ORT threads, 30x28 and 1000x1000
    python bench/voltage_model_cost.py --threads 1 --big 500

Both graphs are exported by ``neqforce export``'s code path with random weights (the cost does not depend
on the weights): two members, paper+elec 32→64→1 SiLU at r_c = 10 and 8 (the bundled ensemble). "q-only":
inputs q, outputs force (what the server fetches today). "voltage committee": the same members with the
``voltage+metal`` global inputs, fed q and voltage, fetching force and force_std (what the server fetches
from a committee on every request). Calls of the two graphs are interleaved, so both see the same load of a
shared machine; prints min and median ms per evaluation at 30×28, sites/s at big×big, and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from neqforce.physics import HolsteinParams, staggered_sign
from neqforce.training.export import export_onnx
from neqforce.training.model import EnsembleForceModel, ModelConfig, build_model


def configuration(lx: int, ly: int, seed: int = 0, melted: int = 8) -> np.ndarray:
    """±2.39 checkerboard, columns 0..melted-1 ~0, N(0, 0.1²) noise; float32 (1, lx, ly)."""
    rng = np.random.default_rng(seed)
    q = 2.39 * staggered_sign(lx, ly) + 0.1 * rng.standard_normal((lx, ly))
    q[:melted] = 0.1 * rng.standard_normal((melted, ly))
    return q[None].astype(np.float32)


def members(global_features: str) -> EnsembleForceModel:
    torch.manual_seed(0)
    ms = [build_model(ModelConfig(descriptor="paper+elec", hidden=(32, 64), activation="silu", r_cut=r,
                                  global_features=global_features), HolsteinParams().physical()).eval()
          for r in (10, 8)]
    return EnsembleForceModel(ms)


def interleaved(fns: dict, min_time: float) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per call of each function, calls interleaved (A, B, A, B, …) for at least
    ``min_time`` seconds in all: on a shared machine both see the same load."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min_time or min(len(v) for v in times.values()) < 3:
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--big", type=int, default=1000, help="side of the large lattice")
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_onnx(members(""), Path(tmp) / "plain.onnx", check=False)[0]
        volt = export_onnx(members("voltage+metal"), Path(tmp) / "volt.onnx", check=False)[0]
        s_plain = ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
        s_volt = ort.InferenceSession(str(volt), so, providers=["CPUExecutionProvider"])
        print(f"# voltage_model_cost: {platform.machine()}, threads = {args.threads}, "
              f"onnxruntime {ort.__version__}")
        print(f"{'lattice':>11} {'q-only (min / median)':>26} {'voltage committee':>26} {'ratio (min)':>12}")
        for lx, ly, budget in ((30, 28, 20.0), (args.big, args.big, 60.0)):
            q = configuration(lx, ly)
            feeds = {"q": q, "voltage": np.array([3.0], np.float32)}
            t = interleaved({"p": lambda x=q: s_plain.run(["force"], {"q": x}),
                             "v": lambda f=feeds: s_volt.run(["force", "force_std"], f)}, budget)
            (p_min, p_med), (v_min, v_med) = t["p"], t["v"]
            if lx * ly <= 10_000:
                print(f"{lx:>5}x{ly:<5} {1e3 * p_min:9.3f} / {1e3 * p_med:7.3f} ms {1e3 * v_min:12.3f} / "
                      f"{1e3 * v_med:7.3f} ms {v_min / p_min:12.3f}")
            else:
                n = lx * ly
                print(f"{lx:>5}x{ly:<5} {n / p_min:8.3g} / {n / p_med:8.3g} sites/s {n / v_min:8.3g} / "
                      f"{n / v_med:8.3g} sites/s {v_min / p_min:8.3f}")

if __name__ == "__main__":
    main()
