"""Where a force model's time goes in ONNX Runtime (one intra-op thread), and what stacking the members'
first-layer products into one would buy (docs/distributed.md, "What 5× would take").

    python bench/model_profile.py                          # bundled model, 4 lattices of 30×28 per call
    python bench/model_profile.py --model M.onnx --batch 1 --lx 80

Part 1: ONNX Runtime's own profiler over ``--repeats`` calls: time per operator type and the largest nodes.
Part 2: the first-layer products alone, rebuilt from the model's MatMul nodes whose weight is a constant
and whose input is the shared neighbour gather: three separate products against one stacked product
(interleaved medians), and whether the outputs are bit-identical.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


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


def first_layer_products(path: str) -> list[np.ndarray]:
    """Constant weights W (rows × K) of the MatMul nodes ``W @ raw`` that share one non-constant input
    (the members' first layers, fed by the neighbour gather)."""
    model = onnx.load(path)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes as well as initializers
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    groups: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] in consts and node.input[1] not in consts:
            w = consts[node.input[0]]
            if w.ndim == 2:
                groups[node.input[1]].append(w.astype(np.float32))
    return max(groups.values(), key=lambda ws: sum(w.size for w in ws), default=[])


def stacked_vs_separate(weights: list[np.ndarray], batch: int, sites: int, repeats: int) -> None:
    """Time ``W_i @ X`` for each member against one ``[W_1; W_2; …] @ X`` split afterwards."""
    k = weights[0].shape[1]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k, sites])
    outs = [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None) for i in range(len(weights))]

    def graph(stacked: bool) -> bytes:
        if stacked:
            inits = [numpy_helper.from_array(np.concatenate(weights), "w"),
                     numpy_helper.from_array(np.array([w.shape[0] for w in weights], np.int64), "rows")]
            nodes = [helper.make_node("MatMul", ["w", "x"], ["m"]),
                     helper.make_node("Split", ["m", "rows"], [o.name for o in outs], axis=1)]
        else:
            inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
            nodes = [helper.make_node("MatMul", [f"w{i}", "x"], [f"o{i}"]) for i in range(len(weights))]
        g = helper.make_graph(nodes, "first_layer", [x_info], outs, inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()

    sep, stk = _session(graph(False)), _session(graph(True))
    x = np.random.default_rng(0).standard_normal((batch, k, sites)).astype(np.float32)
    pairs = zip(sep.run(None, {"x": x}), stk.run(None, {"x": x}), strict=True)
    same = all(np.array_equal(a, b) for a, b in pairs)
    t_sep, t_stk = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sep.run(None, {"x": x})
        t_sep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stk.run(None, {"x": x})
        t_stk.append(time.perf_counter() - t0)
    a, b = np.median(t_sep) * 1e3, np.median(t_stk) * 1e3
    print(f"first-layer products ({len(weights)} × {weights[0].shape[0]}×{k} on {batch}×{sites} sites): "
          f"separate {a:.2f} ms, stacked {b:.2f} ms ({1 - b / a:.0%} less); bit-identical: {same}")


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
    weights = first_layer_products(path)
    if len(weights) > 1:
        stacked_vs_separate(weights, args.batch, args.lx * args.ly, args.repeats // 2)
    else:
        print("first-layer products: fewer than two members share the neighbour gather; nothing to stack")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
