"""Benchmark: exact NEGF solver vs the paper's Riemann-sum method on the same configuration.

    python bench/negf.py                    # 30×28, full 4001-point Riemann sum once (~10 min on 1 core)
    python bench/negf.py --no-full-riemann  # Riemann time extrapolated from a timed subset only

Prints, for one 30×28 configuration at V = 3.0 (the relaxed CDW with its left 8 columns melted
plus Gaussian noise — a typical mid-quench state with a domain wall): the exact solver's time
(both routes), the paper method's time per energy point and for the 4001-point grid (extrapolated
from ``--points`` randomly chosen grid points; measured as well when the full sum is computed),
their ratio, max |Δn| between them (only from the full sum), the peak memory of each, and the
exact solver's time at N = 840, 1680 and 3360 sites (lx = 30, 60, 120 at ly = 28).
BLAS runs on ``--threads`` threads (default 1, the production setting of the data generation).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from neqforce.physics import (
    HolsteinParams,
    cdw_ground_state,
    electron_density,
    electron_density_riemann,
    staggered_sign,
)
from neqforce.physics.negf_reference import energy_grid


def bench_configuration(p: HolsteinParams, seed: int = 0, melted: int = 8) -> np.ndarray:
    """Relaxed CDW with columns 0..melted-1 set to ~0 (metal), plus N(0, 0.1²) noise; shape (lx, ly)."""
    rng = np.random.default_rng(seed)
    q = cdw_ground_state(p) + 0.1 * rng.standard_normal(p.shape)
    q[:melted] = 0.1 * rng.standard_normal((melted, p.ly))
    return q


def synthetic_configuration(p: HolsteinParams, seed: int = 0, melted: int = 8) -> np.ndarray:
    """±2.39 checkerboard, columns 0..melted-1 ~0, N(0, 0.1²) noise (no relaxation: any lx)."""
    rng = np.random.default_rng(seed)
    q = 2.39 * staggered_sign(p.lx, p.ly) + 0.1 * rng.standard_normal(p.shape)
    q[:melted] = 0.1 * rng.standard_normal((melted, p.ly))
    return q


@dataclass(frozen=True)
class Timing:
    """Median wall-clock and process CPU time of a call, s. With one BLAS thread the CPU time is
    the compute time even when other processes share the cores (wall time then grows, CPU does not)."""

    wall: float
    cpu: float

    def __truediv__(self, other: Timing) -> tuple[float, float]:
        return self.wall / other.wall, self.cpu / other.cpu

    def scaled(self, factor: float) -> Timing:
        return Timing(self.wall * factor, self.cpu * factor)


def timed(func: Callable[[], np.ndarray], repeat: int = 1) -> tuple[Timing, np.ndarray]:
    """(median Timing over ``repeat`` calls, result of the last call)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = func()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return Timing(statistics.median(walls), statistics.median(cpus)), out


def peak_memory_mib(func: Callable[[], object]) -> float:
    """Peak of Python/NumPy allocations (tracemalloc) during one call, MiB (BLAS buffers excluded)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def machine_note() -> str:
    load = os.getloadavg()
    try:
        busy = subprocess.run(["pgrep", "-fc", "dataset generate"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        busy = "?"
    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version') or ''}".strip()
                             for i in threadpool_info()}))
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, 'dataset generate' running: "
            f"{'yes' if busy not in ('', '0', '?') else 'no'}; "
            f"BLAS: {blas}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lx", type=int, default=30)
    ap.add_argument("--ly", type=int, default=28)
    ap.add_argument("--voltage", type=float, default=3.0)
    ap.add_argument("--points", type=int, default=40, help="energy points timed for the extrapolation")
    ap.add_argument("--no-full-riemann", dest="full_riemann", action="store_false",
                    help="skip the full 4001-point Riemann sum (then max |Δn| is not measured)")
    ap.add_argument("--scaling", default="30,60,120", help="lx values (at --ly) for the exact-solver scaling")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of the exact solver at the main size")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress stays visible when redirected to a file

    p = HolsteinParams(lx=args.lx, ly=args.ly, voltage=args.voltage)
    grid = energy_grid()
    print(f"NEGF benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(machine_note())
    print(f"BLAS threads: {args.threads}")
    print(f"lattice {p.lx}x{p.ly} (N = {p.n_sites}), V = {p.voltage}, T = {p.temperature}, "
          f"gamma_bath = {p.gamma_bath}, gamma_lead = {p.gamma_lead}")
    q = bench_configuration(p)
    print("configuration: relaxed V = 0 CDW, columns 0-7 melted (Q ~ 0), + N(0, 0.1^2) noise (seed 0)")
    print(f"paper grid: {grid.size} points, step {grid[1] - grid[0]:.3f}, "
          f"window [{grid[0]:.0f}, {grid[-1]:.0f}]")
    print()

    with threadpool_limits(args.threads):
        electron_density(q, p)  # warm-up (imports, BLAS initialisation)
        t_exact, n_exact = timed(lambda: electron_density(q, p), args.repeat)
        _, info = electron_density(q, p, return_info=True)
        t_schur, n_schur = timed(lambda: electron_density(q, p, method="schur"), 1)
        subset = np.sort(np.random.default_rng(1).choice(grid, size=args.points, replace=False))
        t_subset, _ = timed(lambda: electron_density_riemann(q, p, energies=subset), 1)
        t_paper_extrap = t_subset.scaled(grid.size / args.points)
        mem_exact = peak_memory_mib(lambda: electron_density(q, p))
        mem_schur = peak_memory_mib(lambda: electron_density(q, p, method="schur"))
        mem_paper = peak_memory_mib(lambda: electron_density_riemann(q, p, energies=subset[:16]))
        n_paper = None
        if args.full_riemann:
            t_paper_full, n_paper = timed(lambda: electron_density_riemann(q, p), 1)
            t_after, _ = timed(lambda: electron_density(q, p), args.repeat)  # load may have changed
            t_exact = Timing(statistics.median([t_exact.wall, t_after.wall]),
                             statistics.median([t_exact.cpu, t_after.cpu]))

        rows = [
            ("exact NEGF, eigen route (auto)", t_exact, "median of runs before/after", mem_exact),
            ("exact NEGF, Schur route", t_schur, "1 run", mem_schur),
            (f"paper Riemann, {grid.size} pts, extrapolated", t_paper_extrap,
             f"{args.points} pts timed: {1e3 * t_subset.cpu / args.points:.1f} ms/pt cpu", mem_paper),
        ]
        if args.full_riemann:
            rows.append((f"paper Riemann, {grid.size} pts, measured", t_paper_full, "1 run", mem_paper))
        print(f"{'method':<42}{'wall [s]':>10}{'cpu [s]':>10}{'vs exact (wall/cpu)':>22}"
              f"{'peak mem [MiB]':>16}   note")
        for name, t, note, mem in rows:
            rw, rc = t / t_exact
            ratio = f"{rw:.1f}x / {rc:.1f}x"
            print(f"{name:<42}{t.wall:>10.3f}{t.cpu:>10.3f}{ratio:>22}{mem:>16.1f}   {note}")
        print(f"route taken by auto: {info.method} (eigenvector condition {info.eig_cond:.3g}); "
              f"max |n_eigen - n_schur| = {np.max(np.abs(n_exact - n_schur)):.2e}")
        rw, rc = t_paper_extrap / t_exact
        print(f"speed-up exact vs paper (extrapolated): {rc:.0f}x cpu, {rw:.0f}x wall  (target >= 100x)")
        if n_paper is not None:
            rw, rc = t_paper_full / t_exact
            print(f"speed-up exact vs paper (measured full sum): {rc:.0f}x cpu, {rw:.0f}x wall")
            diff = np.abs(n_paper - n_exact)
            col = diff.max(axis=1)
            worst_x = np.unravel_index(diff.argmax(), p.shape)[0]
            print(f"max |n_paper - n_exact| = {diff.max():.3e} (column x={worst_x}); "
                  f"electrode columns x=0: {col[0]:.3e}, x={p.lx - 1}: {col[-1]:.3e}; "
                  f"bulk columns 1..{p.lx - 2}: {col[1:-1].max():.3e}; "
                  f"mean over sites {diff.mean():.3e}")
        else:
            print("max |n_paper - n_exact|: not measured (run without --no-full-riemann)")
        print(f"process max RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        print()

        print("exact solver scaling (1 run each, auto route; checkerboard 2.39 with 8 melted columns + noise;"
              " peak memory traced during the timed run):")
        print(f"{'lattice':<12}{'N':>7}{'wall [s]':>10}{'cpu [s]':>10}{'cpu vs first':>14}"
              f"{'peak mem [MiB]':>16}")
        sizes = []
        for lx in (int(v) for v in args.scaling.split(",")):
            ps = p.replace(lx=lx)
            qs = synthetic_configuration(ps)
            tracemalloc.start()
            t, _ = timed(lambda ps=ps, qs=qs: electron_density(qs, ps), 1)
            mem = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            sizes.append((ps.n_sites, t.cpu))
            print(f"{f'{lx}x{p.ly}':<12}{ps.n_sites:>7}{t.wall:>10.2f}{t.cpu:>10.2f}"
                  f"{t.cpu / sizes[0][1]:>13.1f}x{mem:>16.1f}")
        if len(sizes) > 1:
            n_log, t_log = np.log([s[0] for s in sizes]), np.log([s[1] for s in sizes])
            print(f"fitted exponent: cpu time ~ N^{np.polyfit(n_log, t_log, 1)[0]:.2f}")
        print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
