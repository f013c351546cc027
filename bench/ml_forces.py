"""Benchmark: cost of ML force evaluations (ONNX Runtime, CPU) against the exact NEGF forces.

    python bench/ml_forces.py                        # bundled model, paper preset, exact NEGF; 2 threads
    python bench/ml_forces.py --extra runs/*/m.onnx  # also time other exported models (trade-off table)

Prints, in one run and on the same ``--threads`` CPU threads (ORT intra-op threads; BLAS threads
for NEGF): the time per force evaluation at 30×28 of the bundled model (voltage.onnx), of the paper's
Table I network (113→4096→…→64→1; weights are random when no trained paper model is given with
``--paper``: the cost does not depend on the weights) and of the exact NEGF solver, their ratio, and
the throughput in sites/s at 100×100 and 1000×1000 (the paper preset at 100×100 only: its first
hidden layer alone needs 1e6 × 4096 floats at 1000×1000). Configuration: a ±2.39 CDW checkerboard
with its left 8 columns melted plus noise (a mid-quench state).

Voltage-range models and committees (docs/ml_model.md): a graph that declares the ``voltage`` input is
fed ``--voltage`` (one value per lattice of the batch, as the server does); a graph with the committee
output ``force_std`` is timed computing ``force`` + ``force_std`` (what the server runs on every request
to such a model); the cost of the spread is printed as the ratio to ``force`` alone, the two calls
interleaved on the same session (minimum of each: on a shared machine both see the same load). With
``--extra`` models, the rows of the first table are timed one model after the other (minutes apart on a
busy machine); the last table times all of them side by side at 30×28, called in turn, which is the one to
compare graphs with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from neqforce.models import bundled_model_path
from neqforce.physics import HolsteinParams, negf_forces, staggered_sign


def configuration(lx: int, ly: int, seed: int = 0, melted: int = 8) -> np.ndarray:
    """±2.39 checkerboard, columns 0..melted-1 ~0, N(0, 0.1²) noise; shape (lx, ly)."""
    rng = np.random.default_rng(seed)
    q = 2.39 * staggered_sign(lx, ly) + 0.1 * rng.standard_normal((lx, ly))
    q[:melted] = 0.1 * rng.standard_normal((melted, ly))
    return q


def timed(func: Callable[[], object], min_time: float = 1.0, max_repeat: int = 200) -> float:
    """Median wall time (s) of ``func`` after one warm-up call, repeated for ≳ min_time seconds."""
    func()
    times: list[float] = []
    while len(times) < max_repeat and (sum(times) < min_time or len(times) < 3):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(funcs: list[Callable[[], object]], min_time: float = 1.0,
                max_repeat: int = 200) -> list[float]:
    """Minimum wall time (s) of each of ``funcs``, called in turn (after one warm-up each) for ≳ min_time
    seconds: on a shared machine both see the same load, and the minimum is the least disturbed call."""
    for func in funcs:
        func()
    times: list[list[float]] = [[] for _ in funcs]
    while len(times[0]) < max_repeat and (sum(map(sum, times)) < min_time or len(times[0]) < 3):
        for func, out in zip(funcs, times, strict=True):
            t0 = time.perf_counter()
            func()
            out.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def session(path: str | Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, q: np.ndarray, voltage: float) -> dict[str, np.ndarray]:
    """Inputs of a force graph: ``q`` and, when declared, ``voltage`` float32 [batch] (docs/physics.md)."""
    out = {"q": q}
    for i in sess.get_inputs():
        if i.name == "voltage":
            out["voltage"] = np.full(q.shape[0], voltage, dtype=np.float32)
        elif i.name != "q":
            raise SystemExit(f"error: the model has an input {i.name!r} this benchmark does not know")
    return out


def has_force_std(sess: ort.InferenceSession) -> bool:
    return any(o.name == "force_std" for o in sess.get_outputs())


def paper_model(path: str | None, tmp: Path) -> tuple[Path, str]:
    """The paper-preset ONNX: the given file, or the Table I network with random weights."""
    if path:
        return Path(path), "trained"
    import torch

    from neqforce.training.export import export_onnx
    from neqforce.training.model import PRESETS, build_model

    torch.manual_seed(0)
    cfg = PRESETS["paper"]
    model = build_model(cfg, HolsteinParams().physical())
    arch = {"macs_per_site": cfg.macs_per_site(), "graph_macs_per_site": cfg.graph_macs_per_site()}
    out, _ = export_onnx(model, tmp / "paper.onnx", {"neqforce.architecture": json.dumps(arch)}, check=False)
    return out, "random weights"


def metadata(path: Path) -> dict:
    """(architecture, test metrics) from a neqforce model's metadata (empty dicts when absent)."""
    meta = dict(session(path, 1).get_modelmeta().custom_metadata_map)
    arch = json.loads(meta.get("neqforce.architecture", "{}"))
    test = json.loads(meta.get("neqforce.metrics", "{}")).get("test", {})
    return {"arch": arch, "test": test}


def macs(path: Path) -> str:
    arch = metadata(path)["arch"]
    return f"{arch.get('graph_macs_per_site', float('nan')) / 1e3:.1f}k" if arch else "?"


def _mse(test: dict, region: str) -> str:
    return f"{test[region]['mse']:.2e}" if region in test else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for ORT and for NEGF's BLAS")
    ap.add_argument("--model", default=str(bundled_model_path()), help="model to benchmark (bundled)")
    ap.add_argument("--paper", default=None, help="trained paper-preset ONNX (default: random weights)")
    ap.add_argument("--extra", nargs="*", default=[], help="more ONNX models for the 30x28/1000x1000 table")
    ap.add_argument("--no-negf", action="store_true", help="skip the NEGF timing")
    ap.add_argument("--big", type=int, default=1000, help="side of the large lattice (1000)")
    ap.add_argument("--voltage", type=float, default=3.0, help="V fed to models with a voltage input (3.0)")
    args = ap.parse_args()

    print(f"# ml_forces benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads = {args.threads}, onnxruntime {ort.__version__}")
    rows: list[tuple[str, str, float]] = []  # (model, lattice, seconds per evaluation)
    p = HolsteinParams()
    q30 = configuration(p.lx, p.ly)

    t_negf = float("nan")
    if not args.no_negf:
        with threadpool_limits(args.threads):
            t_negf = timed(lambda: negf_forces(q30, p), min_time=3.0, max_repeat=5)
        rows.append(("exact NEGF", "30x28", t_negf))

    with tempfile.TemporaryDirectory() as tmp:
        paper_path, paper_kind = paper_model(args.paper, Path(tmp))
        models = [(f"bundled {Path(args.model).stem}", Path(args.model)),
                  (f"paper preset ({paper_kind})", paper_path)]
        models += [(Path(e).parent.name + "/" + Path(e).name, Path(e)) for e in args.extra]
        spread: list[tuple[str, str, float, float]] = []  # (model, lattice, force only, + force_std) min s
        info = {name: (metadata(path), macs(path)) for name, path in models}
        for name, path in models:
            sess = session(path, args.threads)
            sizes = [(30, 28), (100, 100)] + ([] if name.startswith("paper") else [(args.big, args.big)])
            committee = has_force_std(sess)
            for lx, ly in sizes:
                q = configuration(lx, ly)[None].astype(np.float32)
                heavy = lx >= 500 or (name.startswith("paper") and lx >= 100)
                inputs = feeds(sess, q, args.voltage)
                outs = ["force", "force_std"] if committee else ["force"]
                t = timed(lambda s=sess, o=outs, x=inputs: s.run(o, x),
                          min_time=0.0 if heavy else 1.0, max_repeat=3 if heavy else 200)
                rows.append((f"{name}{' +force_std' if committee else ''} [{info[name][1]} MAC/site]",
                             f"{lx}x{ly}", t))
                if committee:
                    pair = interleaved([lambda s=sess, x=inputs: s.run(["force"], x),
                                        lambda s=sess, x=inputs: s.run(["force", "force_std"], x)],
                                       min_time=0.0 if heavy else 2.0, max_repeat=3 if heavy else 200)
                    spread.append((name, f"{lx}x{ly}", *pair))

        # the models side by side at 30x28, called in turn: minutes of machine noise hit all of them alike
        side = [(name, path) for name, path in models if not name.startswith("paper")]
        if len(side) > 1:
            q = configuration(30, 28)[None].astype(np.float32)
            calls = []
            for _, path in side:
                sess = session(path, args.threads)
                outs = ["force", "force_std"] if has_force_std(sess) else ["force"]
                inputs = feeds(sess, q, args.voltage)
                calls.append(lambda s=sess, o=outs, x=inputs: s.run(o, x))
            side_by_side = list(zip([n for n, _ in side], interleaved(calls, min_time=4.0, max_repeat=400),
                                    strict=True))
        else:
            side_by_side = []

    print(f"{'model':<48} {'lattice':>10} {'time/eval':>12} {'sites/s':>12} {'vs NEGF 30x28':>14}")
    for name, lat, t in rows:
        lx, ly = (int(v) for v in lat.split("x"))
        speedup = f"{t_negf / t:,.0f}x" if lat == "30x28" and np.isfinite(t_negf) else ""
        unit = f"{t * 1e3:9.3f} ms" if t < 1 else f"{t:10.3f} s"
        print(f"{name:<48} {lat:>10} {unit:>12} {lx * ly / t:12.3e} {speedup:>14}")

    if spread:
        print("\ncost of the committee spread: force alone vs force + force_std, interleaved, min of each")
        for n, lat, t_f, t_fs in spread:
            print(f"  {n:<44} {lat:>10} {t_f * 1e3:10.3f} ms {t_fs * 1e3:10.3f} ms {t_fs / t_f:7.3f}x")

    if side_by_side:
        base = side_by_side[0][1]
        print("\nthe models side by side at 30x28 (called in turn, min of each; with force_std where the "
              "graph has it)")
        for n, t in side_by_side:
            print(f"  {n:<44} {t * 1e3:10.3f} ms {t / base:7.3f}x the bundled model")

    # accuracy/cost trade-off: test metrics stored in each model (held-out trajectories, [-1, 1] units)
    print(f"\n{'model':<34} {'MAC/site':>9} {'MSE':>9} {'sigma':>7} {'MSE L':>9} {'MSE bulk':>9} "
          f"{'MSE R':>9} {'30x28 ms':>9} {'sites/s big':>12}")
    for name, _ in models:
        md, n_macs = info[name]
        test = md["test"]
        t30 = next((t for n, lat, t in rows if n.startswith(name) and lat == "30x28"), float("nan"))
        tbig = next((t for n, lat, t in rows if n.startswith(name) and lat == f"{args.big}x{args.big}"),
                    float("nan"))
        sigma = f"{test['overall']['sigma']:.4f}" if "overall" in test else "-"
        print(f"{name[:34]:<34} {n_macs:>9} {_mse(test, 'overall'):>9} {sigma:>7} "
              f"{_mse(test, 'near_left'):>9} {_mse(test, 'bulk'):>9} {_mse(test, 'near_right'):>9} "
              f"{t30 * 1e3:9.3f} {args.big**2 / tbig:12.3e}")


if __name__ == "__main__":
    main()
