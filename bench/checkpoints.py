"""Checkpoint cost over a long run: in-place appends (format /2) vs rewriting the whole file (format /1).

A 20 000-step BD run on a small lattice records ξ every step and a frame every ``save_every`` steps;
every ``checkpoint_every`` steps the writer makes it durable. Prints the median wall time of a
checkpoint early and late in the run for both ways, side by side:

    python bench/checkpoints.py [--steps 20000] [--lx 8 --ly 6] [--checkpoint-every 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from neqforce.atomic import atomic_path
from neqforce.physics import HolsteinParams
from neqforce.trajectory import Trajectory, TrajectoryWriter


def write_v1(path: Path, traj: Trajectory) -> None:
    """The format-/1 checkpoint: the whole file (frames gzip-compressed) to a temporary name, renamed."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key in ("seed", "dt", "save_every", "n_steps", "backend", "model", "q0_bulk", "created",
                    "complete"):
            f.attrs[key] = getattr(traj, key)
        f.attrs["format"] = "neqforce.trajectory/1"
        f.attrs["params"] = traj.params.to_json()
        f.attrs["versions"] = json.dumps(traj.versions, sort_keys=True)
        f.attrs["extra"] = json.dumps(traj.extra, sort_keys=True)
        time_, xi = traj.xi_series()
        f["series/step"], f["series/time"], f["series/xi"] = traj.series_step, time_, xi
        for name, value in traj.frames().items():
            f.create_dataset(f"frames/{name}", data=value,
                             compression="gzip" if value.ndim == 3 and value.size else None)
        f["checkpoint/step"] = traj.checkpoint_step
        f["checkpoint/q"] = traj.checkpoint_q


class RewriteWriter(TrajectoryWriter):
    """The format-/1 behaviour: every checkpoint rewrites the whole file."""

    def checkpoint(self, complete: bool = False) -> None:
        self.traj.complete = complete
        write_v1(self.path, self.traj)


def checkpoint_times(writer_cls: type[TrajectoryWriter], path: Path, params: HolsteinParams, steps: int,
                     save_every: int, checkpoint_every: int) -> np.ndarray:
    """Wall seconds of each checkpoint of a synthetic run (states are random; only the I/O is timed)."""
    rng = np.random.default_rng(0)
    traj = Trajectory(params=params, seed=0, dt=0.1, save_every=save_every, n_steps=steps)
    writer = writer_cls(path, traj)
    q = rng.standard_normal(params.shape)
    times = []
    for step in range(steps + 1):
        writer.record(step, q, -q, None, float(step) / steps)
        if step % checkpoint_every == 0:
            t0 = time.perf_counter()
            writer.checkpoint(complete=step == steps)
            times.append(time.perf_counter() - t0)
    return np.asarray(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lx", type=int, default=8)
    ap.add_argument("--ly", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--window", type=int, default=20, help="checkpoints averaged at each end")
    args = ap.parse_args()
    params = HolsteinParams(lx=args.lx, ly=args.ly)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, cls in (("append (/2)", TrajectoryWriter), ("rewrite (/1)", RewriteWriter)):
            results[name] = checkpoint_times(cls, Path(tmp) / f"{cls.__name__}.h5", params, args.steps,
                                             args.save_every, args.checkpoint_every)
    w = args.window
    print(f"{args.steps} steps on {args.lx}x{args.ly}, a checkpoint every {args.checkpoint_every} steps "
          f"({len(next(iter(results.values())))} checkpoints), frames every {args.save_every} steps")
    print(f"{'writer':<14}{'first ' + str(w) + ' (ms)':>16}{'last ' + str(w) + ' (ms)':>16}{'late/early':>12}"
          f"{'max (ms)':>10}{'final (ms)':>12}{'total (s)':>11}")
    for name, t in results.items():
        # medians of the first and last windows (the final checkpoint, which closes the run, apart)
        early, late = np.median(t[1:w + 1]) * 1e3, np.median(t[-w - 1:-1]) * 1e3
        print(f"{name:<14}{early:>16.2f}{late:>16.2f}{late / early:>12.2f}{np.max(t[:-1]) * 1e3:>10.1f}"
              f"{t[-1] * 1e3:>12.1f}{np.sum(t):>11.2f}")
    print("append: in place behind a commit marker; max = a rewrite with twice the room (rows 1024, 2048, "
          "…); final = the compact rewrite of the complete run")
    a, r = results["append (/2)"], results["rewrite (/1)"]
    late_ratio = np.median(r[-w - 1:-1]) / np.median(a[-w - 1:-1])
    print(f"late checkpoint (median): rewrite / append = {late_ratio:.1f}x; "
          f"whole run: {np.sum(r) / np.sum(a):.1f}x")


if __name__ == "__main__":
    main()
