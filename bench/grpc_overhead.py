"""Benchmark: cost of serving forces over gRPC against calling ONNX Runtime in-process.

    python bench/grpc_overhead.py                         # bundled model (or a stand-in, see below)
    python bench/grpc_overhead.py --model m.onnx --threads 2

Same lattice, same model, same ONNX Runtime session options (``--threads`` intra-op threads) on both
sides. The server runs as a separate ``neqforce serve`` process on 127.0.0.1. For each size
(30x28, 100x100, 300x300) the three ways of getting (force, density) as float64 arrays are timed
interleaved (so background load hits them alike):

* in-process: ``session.run`` on ``q[None].astype(float32)``, outputs cast to float64;
* gRPC unary: ``ForceClient.compute_forces`` (FP64 q on the wire, FP32 outputs back);
* gRPC stream: ``ForceClient.stream(...).compute`` (one bidirectional stream).

Prints p50/p99 latency of each and the ratios p50(gRPC)/p50(in-process). Target: <= 1.15x at 100x100
and above. Then a bounded loopback load test: 8 concurrent clients x 200 unary requests at 30x28,
printing errors, throughput and latency percentiles.

Without ``--model`` and without a bundled model, a stand-in with the cost profile of a local MLP force
field is built with onnx (a 13x13 convolution to 64 channels, two 1x1 layers; random weights: the
cost does not depend on them); the header says which model was used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from neqforce.client import ForceClient
from neqforce.models import bundled_model_path
from neqforce.physics import HolsteinParams, staggered_sign
from neqforce.server.backends.onnx import OnnxModel

SIZES = ((30, 28), (100, 100), (300, 300))
TARGET = 1.15


def stand_in_model(path: Path, params: HolsteinParams, seed: int = 0) -> Path:
    """A SPEC §9 model with an MLP-like cost (~15k multiply-adds per site); needs the onnx package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = {"w1": rng.normal(0, 0.1, (64, 1, 13, 13)), "w2": rng.normal(0, 0.1, (64, 64, 1, 1)),
         "w3": rng.normal(0, 0.1, (1, 64, 1, 1))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array(v, dtype=np.float32), k)
              for k, v in (("half", 0.5), ("tenth", 0.1))]
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes = [
        helper.make_node("Unsqueeze", ["q", "axis1"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1"], ["h1"], pads=[6, 6, 6, 6]),
        helper.make_node("Tanh", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w3"], ["h3"]),
        helper.make_node("Squeeze", ["h3", "axis1"], ["force"]),
        helper.make_node("Tanh", ["force"], ["t"]),
        helper.make_node("Mul", ["t", "tenth"], ["dn"]),
        helper.make_node("Add", ["dn", "half"], ["density"]),
    ]
    dims = ["batch", "lx", "ly"]
    io = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
          for name in ("q", "force", "density")}
    graph = helper.make_graph(nodes, "stand_in", [io["q"]], [io["force"], io["density"]], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"neqforce.params": json.dumps(params.physical()), "neqforce.descriptor": "stand-in",
                       "neqforce.version": "bench"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def configuration(lx: int, ly: int, seed: int = 0) -> np.ndarray:
    """±2.39 checkerboard with a melted left quarter plus noise, shape (lx, ly): a mid-quench state."""
    rng = np.random.default_rng(seed)
    q = 2.39 * staggered_sign(lx, ly) + 0.1 * rng.standard_normal((lx, ly))
    q[: lx // 4] = 0.1 * rng.standard_normal((lx // 4, ly))
    return q


def percentiles(times: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def start_server(model: Path, threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", "from neqforce.cli import app; app()", "serve", "--port", "0",
           "--no-default-model", "--model", str(model), "--intra-op-threads", str(threads),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def overhead(model: OnnxModel, address: str, params: HolsteinParams,
             repeats: dict[tuple[int, int], int]) -> None:
    print(f"\n{'lattice':>9} {'n':>4} | {'in-process p50/p99 ms':>22} | {'unary p50/p99 ms':>18} "
          f"{'ratio':>6} | {'stream p50/p99 ms':>18} {'ratio':>6}")
    with ForceClient(address, timeout=120) as client:
        for lx, ly in SIZES:
            p = params.replace(lx=lx, ly=ly)
            q = configuration(lx, ly)
            n = repeats[(lx, ly)]
            times: dict[str, list[float]] = {"local": [], "unary": [], "stream": []}
            with client.stream(p, backend="onnx") as stream:
                def local(q=q):
                    outputs = model.session.run(["force", "density"], {"q": q[None].astype(np.float32)})
                    return [a.astype(np.float64) for a in outputs]

                calls = {
                    "local": local,
                    "unary": lambda q=q, p=p: client.compute_forces(q, p, backend="onnx"),
                    "stream": lambda q=q, s=stream: s.compute(q),
                }
                ref = calls["local"]()[0][0]
                got = calls["unary"]().force
                assert np.array_equal(ref, got), "gRPC and in-process forces differ"
                for i in range(n + 3):
                    order = list(calls)[i % 3:] + list(calls)[: i % 3]  # rotate: no method always goes first
                    for name in order:
                        t0 = time.perf_counter()
                        calls[name]()
                        if i >= 3:  # warm-up
                            times[name].append(time.perf_counter() - t0)
            local, unary, stream_t = (percentiles(times[k]) for k in ("local", "unary", "stream"))
            print(f"{lx:>4}x{ly:<4} {n:>4} | {local[0]:>10.3f} / {local[1]:<9.3f} | "
                  f"{unary[0]:>8.3f} / {unary[1]:<7.3f} {unary[0] / local[0]:>5.2f}x | "
                  f"{stream_t[0]:>8.3f} / {stream_t[1]:<7.3f} {stream_t[0] / local[0]:>5.2f}x")
    print(f"target: gRPC p50 <= {TARGET:.2f}x in-process at 100x100 and above")


def load_test(address: str, params: HolsteinParams, clients: int, requests: int) -> None:
    p = params.replace(lx=30, ly=28)
    q = configuration(30, 28)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(seed: int) -> None:
        mine: list[float] = []
        with ForceClient(address, timeout=60, retries=0) as c:
            c.compute_forces(q, p, backend="onnx")  # connect before the clock starts
            barrier.wait()
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    c.compute_forces(q, p, backend="onnx")
                except Exception as exc:  # counted and reported, never fatal
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p50, p99 = percentiles(latencies)
    print(f"\nload test: {clients} clients x {requests} unary requests at 30x28 (loopback)")
    n = len(latencies)
    print(f"  requests {n}, errors {len(errors)}, wall {wall:.2f} s, throughput {n / wall:.1f} req/s "
          f"({n * 840 / wall / 1e6:.2f} Msites/s), latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {max(latencies) * 1e3:.2f} ms")
    for message in sorted(set(errors))[:5]:
        print(f"  error: {message}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: bundled, else a stand-in)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both sides")
    ap.add_argument("--repeats", type=int, nargs=3, default=(300, 60, 15),
                    help="timed calls per method at 30x28, 100x100, 300x300")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or bundled_model_path()
        label = str(path)
        if not path.is_file():
            path = stand_in_model(Path(tmp) / "stand_in.onnx", HolsteinParams())
            label = "stand-in (no bundled model yet): 13x13 conv -> 64 -> 64 -> 1, ~15k MAC/site"
        model = OnnxModel.load(path, "bench", providers=["CPUExecutionProvider"], threads=args.threads)
        params = HolsteinParams(lx=30, ly=28, **model.params)
        print(f"model: {label}")
        cpu = platform.processor() or platform.machine()
        print(f"onnxruntime {ort.__version__}, intra-op threads {args.threads}, {cpu}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        proc, address = start_server(path, args.threads)
        try:
            overhead(model, address, params, dict(zip(SIZES, args.repeats, strict=True)))
            load_test(address, params, args.clients, args.requests)
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
