"""Where a force model's time goes in ONNX Runtime (one intra-op thread): time per operator type and the
largest nodes (docs/distributed.md, "What 5× would take"; docs/ml_model.md, "Inference graph and export").

    python bench/model_profile.py                          # bundled model, 4 lattices of 30×28 per call
    python bench/model_profile.py --model M.onnx --batch 1 --lx 80

ONNX Runtime's own profiler over ``--repeats`` calls. (Until package 0.5.3 it also timed the members'
first-layer products stacked against separate; the convolution graph of 0.5.3 stacks them.)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _session(model: bytes | str, profile_dir: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if profile_dir:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def profile(path: str, q: np.ndarray, voltage: float, repeats: int) -> None:
    """Operator-type and node shares of one call, averaged over ``repeats`` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(path, tmp)
        feeds = {"q": q}
        if "voltage" in {i.name for i in sess.get_inputs()}:
            feeds["voltage"] = np.full(len(q), voltage, np.float32)
        for _ in range(repeats):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    shape: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            by_op[op] += e["dur"]
            by_node[(e["name"].removesuffix("_kernel_time"), op)] += e["dur"]
            shape[e["name"].removesuffix("_kernel_time")] = str(e["args"].get("output_type_shape", ""))[:60]
    total = sum(by_op.values())
    print(f"ONNX Runtime profile: {total / repeats / 1e3:.2f} ms per call of {len(q)} lattice(s) "
          f"{q.shape[1]}×{q.shape[2]}; by operator type (share of kernel time):")
    for op, us in by_op.most_common(12):
        print(f"  {op:22s}{us / total:6.1%}")
    print("largest nodes:")
    for (name, op), us in by_node.most_common(8):
        print(f"  {us / total:6.1%}  {op:10s} {name[:40]:40s} {shape[name]}")


def main(argv: list[str] | None = None) -> int:
    from neqforce.models import bundled_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled one)")
    ap.add_argument("--batch", type=int, default=4, help="lattices per call (a sweep task's piece at 30×28)")
    ap.add_argument("--lx", type=int, default=30)
    ap.add_argument("--ly", type=int, default=28)
    ap.add_argument("--voltage", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    path = str(args.model or bundled_model_path())
    if not Path(path).is_file():
        raise SystemExit(f"error: model not found: {path}")
    q = (0.5 * np.random.default_rng(0).standard_normal((args.batch, args.lx, args.ly))).astype(np.float32)
    profile(path, q, args.voltage, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
