"""Batching benefit of ``neqforce sweep``: an ensemble of R replicas as one sweep vs R separate
``neqforce simulate`` runs, both end to end from the command line, on the same machine in one run.

    python bench/sweep.py                       # 16 replicas, 30×28, 600 steps, bundled model
    python bench/sweep.py --replicas 16 --steps 600 --chunk 16
    python bench/sweep.py --backend onnx        # the model on every step: batching alone, no NEGF fallbacks

The separate runs are what a shell loop does: ``neqforce simulate --seed s`` (embedded server, one gRPC
round trip per step; --no-plots: figures are not replica-steps). ``--backend`` (and ``--model``) go
to both sides alike: under ``auto`` (the default, what users run) a step whose committee spread exceeds the
model's threshold is recomputed with exact NEGF on both sides, and those fallbacks (~1 s each at 30×28)
cost the same per replica whether batched or not; ``--backend onnx`` measures the batching of the
model calls alone. The sweep is
``neqforce sweep --seeds R --no-plots`` (embedded Dask LocalCluster, replicas of a task advanced with one
batched force call per step, summary.csv/json included; --no-plots like the simulate side). Both wall
times include process start-up. What the sweep's figures cost is printed apart: the same sweep command
rerun with plots, nothing left to run (start-up, summary, phase_diagram.png and xi_families.png).
Prints replica-steps per second side by side, the ratio (target: >= 5x), and checks that every sweep
replica is bit-for-bit the ``simulate`` run with its seed.

Both sides also get their CPU seconds (user + system of the processes they ran) and the machine's load
average before and after: on a machine shared with other jobs, wall-clock throughput depends on how
many cores were free, CPU seconds per replica-step much less. Last, the model alone (ONNX Runtime in
this process, one intra-op thread): ms per lattice with one lattice per call, with the whole batch in one
call, and in the pieces a sweep task uses — the floor of a replica-step's CPU cost.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from neqforce.trajectory import read_trajectory


def _exe() -> str:
    beside = Path(sys.executable).with_name("neqforce")
    return str(beside) if beside.exists() else "neqforce"


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and everything it waited for)."""
    t0, c0 = time.perf_counter(), _cpu_children()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - c0
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return wall, cpu


def model_alone(replicas: int, lx: int, ly: int, model_path: Path | None = None,
                repeats: int = 20) -> dict[str, float]:
    """Seconds per lattice of the bundled model alone (one intra-op thread, median of ``repeats``,
    interleaved): one lattice per call, the whole batch in one call, the sweep task's pieces."""
    from neqforce.client.simulate import initial_cdw
    from neqforce.client.sweep_task import OnnxBatchForces
    from neqforce.models import bundled_model_path
    from neqforce.physics import HolsteinParams

    p = HolsteinParams(lx=lx, ly=ly)
    q = initial_cdw(p)[0] + 0.1 * np.random.default_rng(0).standard_normal((replicas, lx, ly))
    pieces = OnnxBatchForces(str(model_path or bundled_model_path()), threads=1)
    model = pieces._model
    ways = {"1 per call": lambda: [model.evaluate(q[i:i + 1], True) for i in range(replicas)],
            f"{replicas} per call": lambda: model.evaluate(q, True),
            "task pieces": lambda: pieces(q)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / replicas)
    return {name: float(np.median(t)) for name, t in times.items()}


def same_run(a: Path, b: Path) -> bool:
    """Bit-for-bit the same run (ξ series, frames, checkpoint)."""
    ta, tb = read_trajectory(a), read_trajectory(b)
    fa, fb = ta.frames(), tb.frames()
    return (ta.series_xi == tb.series_xi and ta.series_step == tb.series_step
            and all(np.array_equal(fa[k], fb[k], equal_nan=True) for k in ("step", "q", "force", "density"))
            and np.array_equal(ta.checkpoint_q, tb.checkpoint_q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lx", type=int, default=30)
    ap.add_argument("--ly", type=int, default=28)
    ap.add_argument("--chunk", type=int, default=None, help="sweep --chunk (default: the sweep's own)")
    ap.add_argument("--workers", type=int, default=None, help="sweep --workers (default: cores)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnx"), help="backend of both sides")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model of both sides (default: bundled)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="neqforce-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    lattice = ["--lx", str(args.lx), "--ly", str(args.ly), "--backend", args.backend]
    if args.model:
        lattice += ["--model", str(args.model)]
    exe = _exe()
    print(f"{args.replicas} replicas, {args.lx}×{args.ly}, {args.steps} steps, bundled model; "
          f"{os.cpu_count()} cores; work folder {work}", flush=True)

    load = {"simulate": [os.getloadavg()[0]]}
    sim_wall = sim_cpu = 0.0
    for seed in range(args.replicas):
        out = work / "simulate" / f"seed{seed}"
        wall, cpu = _run([exe, "simulate", *lattice, "--steps", str(args.steps), "--seed", str(seed), "--out",
                          str(out), "--no-plots", "--no-progress", "--overwrite"])
        sim_wall, sim_cpu = sim_wall + wall, sim_cpu + cpu
        print(f"  simulate --seed {seed}: {sim_wall:.1f} s so far", flush=True)
    load["simulate"].append(os.getloadavg()[0])

    sweep_out = work / "sweep"
    cmd = [exe, "sweep", *lattice, "--seeds", str(args.replicas), "--steps", str(args.steps), "--out",
           str(sweep_out), "--no-progress", "--no-plots"]
    if args.chunk:
        cmd += ["--chunk", str(args.chunk)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if sweep_out.exists():
        import shutil

        shutil.rmtree(sweep_out)
    load["sweep"] = [os.getloadavg()[0]]
    sweep_wall, sweep_cpu = _run(cmd)
    load["sweep"].append(os.getloadavg()[0])

    figures_wall, _ = _run([c for c in cmd if c != "--no-plots"] + ["--plots"])
    if not (sweep_out / "phase_diagram.png").exists():
        raise SystemExit("error: the sweep rerun with --plots wrote no phase_diagram.png")

    runs = sorted((sweep_out / "runs").glob("*/seed*/trajectory.h5"))
    batch = max(read_trajectory(f).extra["segments"][-1]["replicas_in_batch"] for f in runs)
    backend = {read_trajectory(f).backend for f in runs}
    replica_steps = args.replicas * (args.steps + 1)
    rate_sim, rate_sweep = replica_steps / sim_wall, replica_steps / sweep_wall
    print()
    print(f"{'':30s}{'wall [s]':>9s}{'CPU [s]':>9s}{'replica-steps':>15s}{'replica-steps/s':>17s}"
          f"{'CPU ms/replica-step':>21s}{'load avg 1 min':>17s}")
    for name, wall, cpu, rate, key in (
            (f"{args.replicas} × neqforce simulate", sim_wall, sim_cpu, rate_sim, "simulate"),
            (f"neqforce sweep --seeds {args.replicas}", sweep_wall, sweep_cpu, rate_sweep, "sweep")):
        print(f"{name:30s}{wall:9.1f}{cpu:9.1f}{replica_steps:15d}{rate:17.0f}"
              f"{cpu / replica_steps * 1e3:21.2f}{'{:.1f} -> {:.1f}'.format(*load[key]):>17s}")
    print(f"ratio sweep / separate simulate runs: {rate_sweep / rate_sim:.2f}x (target >= 5x); per CPU "
          f"second {sim_cpu / sweep_cpu:.2f}x; sweep backend {','.join(sorted(backend))}, up to {batch} "
          f"replicas per batched force call")
    with_figures = replica_steps / (sweep_wall + figures_wall) / rate_sim
    print(f"the sweep's figures, apart: {figures_wall:.1f} s (the same command rerun with --plots, nothing "
          f"left to run); with them the ratio is {with_figures:.2f}x")
    negf_steps = sum(int(np.count_nonzero(np.asarray(read_trajectory(f).series_force_std_max) == 0.0))
                     for f in runs)
    print(f"steps answered by exact NEGF (spread above the model's threshold): {negf_steps} of "
          f"{replica_steps} replica-steps")
    alone = model_alone(args.replicas, args.lx, args.ly, args.model)
    print("model alone (ONNX Runtime, 1 thread, median), ms per lattice: "
          + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in alone.items()))
    same = sum(same_run(work / "simulate" / f"seed{s}" / "trajectory.h5",
                        next(f for f in runs if f.parent.name == f"seed{s}")) for s in range(args.replicas))
    print(f"bit-for-bit: {same}/{args.replicas} sweep replicas identical to `neqforce simulate --seed s`")
    return 0 if same == args.replicas else 1


if __name__ == "__main__":
    raise SystemExit(main())
