"""HDF5 trajectories of Brownian-dynamics runs, written atomically and resumable.

One file per run (format ``neqforce.trajectory/1``)::

    attrs   format, params (JSON of HolsteinParams), seed, dt, save_every, n_steps (planned),
            backend, model, q0_bulk, versions (JSON), created, complete (bool),
            extra (JSON; wall_time_s = wall-clock seconds spent on the run, summed over resumes)
    series/step, series/time, series/xi           every step reached: ξ(t)
    frames/step, frames/time, frames/q, frames/force, frames/density   every ``save_every`` steps
                                                   (density is NaN where the backend gave none)
    checkpoint/step, checkpoint/q                  the last state reached (resume point)

Every :meth:`TrajectoryWriter.checkpoint` rewrites the whole file to a temporary name and renames
it over the old one, so a file on disk is always complete and readable, whatever interrupts the run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from neqforce import __version__
from neqforce.atomic import atomic_path
from neqforce.physics.params import HolsteinParams

FORMAT = "neqforce.trajectory/1"


def software_versions() -> dict[str, str]:
    """Versions of the software that produced a file (stored with every dataset/trajectory/model)."""
    import scipy

    versions = {"neqforce": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "scipy": scipy.__version__, "h5py": h5py.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


@dataclass
class Trajectory:
    """A trajectory in memory (see module docstring for the meaning of each field)."""

    params: HolsteinParams
    seed: int
    dt: float
    save_every: int
    n_steps: int
    backend: str = ""
    model: str = ""
    q0_bulk: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=software_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    complete: bool = False
    series_step: list[int] = field(default_factory=list)
    series_xi: list[float] = field(default_factory=list)
    frame_step: list[int] = field(default_factory=list)
    frame_q: list[np.ndarray] = field(default_factory=list)
    frame_force: list[np.ndarray] = field(default_factory=list)
    frame_density: list[np.ndarray] = field(default_factory=list)
    checkpoint_step: int = -1
    checkpoint_q: np.ndarray | None = None

    @property
    def last_step(self) -> int:
        return self.checkpoint_step

    def frames(self) -> dict[str, np.ndarray]:
        """Stacked frames: step (S,), time (S,), q/force/density (S, lx, ly)."""
        shape = (0, *self.params.shape)

        def stack(xs: list[np.ndarray]) -> np.ndarray:
            return np.stack(xs) if xs else np.zeros(shape)

        steps = np.asarray(self.frame_step, dtype=np.int64)
        return {"step": steps, "time": steps * self.dt, "q": stack(self.frame_q),
                "force": stack(self.frame_force), "density": stack(self.frame_density)}

    def xi_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(time (S,), ξ (S,)) for every step reached."""
        return np.asarray(self.series_step, dtype=np.int64) * self.dt, np.asarray(self.series_xi)


class TrajectoryWriter:
    """Collects BD states and checkpoints them atomically to ``path``."""

    def __init__(self, path: str | os.PathLike[str], trajectory: Trajectory) -> None:
        self.path = Path(path)
        self.traj = trajectory
        self._started = time.monotonic()
        self._wall_before = float(trajectory.extra.get("wall_time_s", 0.0))

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> TrajectoryWriter:
        """Reopen an interrupted run; continue from ``writer.traj.checkpoint_step``."""
        return cls(path, read_trajectory(path))

    def record(self, step: int, q: np.ndarray, force: np.ndarray, density: np.ndarray | None,
               xi: float) -> None:
        """Record the state at ``step`` (ξ always; a frame when step % save_every == 0)."""
        t = self.traj
        t.series_step.append(int(step))
        t.series_xi.append(float(xi))
        if step % t.save_every == 0:
            t.frame_step.append(int(step))
            t.frame_q.append(np.array(q, dtype=np.float64))
            t.frame_force.append(np.array(force, dtype=np.float64))
            t.frame_density.append(np.full(t.params.shape, np.nan) if density is None
                                   else np.array(density, dtype=np.float64))
        t.checkpoint_step = int(step)
        t.checkpoint_q = np.array(q, dtype=np.float64)

    def checkpoint(self, complete: bool = False) -> None:
        """Write everything recorded so far (atomically); mark complete at the end of the run."""
        self.traj.complete = complete
        self.traj.extra["wall_time_s"] = self._wall_before + time.monotonic() - self._started
        write_trajectory(self.path, self.traj)


def write_trajectory(path: str | os.PathLike[str], traj: Trajectory) -> None:
    """Write ``traj`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        a = f.attrs
        a["format"] = FORMAT
        a["params"] = traj.params.to_json()
        a["seed"] = traj.seed
        a["dt"] = traj.dt
        a["save_every"] = traj.save_every
        a["n_steps"] = traj.n_steps
        a["backend"] = traj.backend
        a["model"] = traj.model
        a["q0_bulk"] = traj.q0_bulk
        a["versions"] = json.dumps(traj.versions, sort_keys=True)
        a["created"] = traj.created
        a["complete"] = bool(traj.complete)
        a["extra"] = json.dumps(traj.extra, sort_keys=True)
        steps = np.asarray(traj.series_step, dtype=np.int64)
        f["series/step"] = steps
        f["series/time"] = steps * traj.dt
        f["series/xi"] = np.asarray(traj.series_xi, dtype=np.float64)
        frames = traj.frames()
        for name, value in frames.items():
            f.create_dataset(f"frames/{name}", data=value,
                             compression="gzip" if value.ndim == 3 and value.size else None)
        f["checkpoint/step"] = traj.checkpoint_step
        f["checkpoint/q"] = (traj.checkpoint_q if traj.checkpoint_q is not None
                             else np.full(traj.params.shape, np.nan))


def read_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file written by :func:`write_trajectory` (ValueError if it is not one)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"trajectory file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file: {exc}") from exc
    with f:
        a = f.attrs
        if a.get("format") != FORMAT:
            raise ValueError(f"{path} is not a neqforce trajectory (format {a.get('format')!r})")
        params = HolsteinParams.from_json(a["params"])
        traj = Trajectory(
            params=params, seed=int(a["seed"]), dt=float(a["dt"]), save_every=int(a["save_every"]),
            n_steps=int(a["n_steps"]), backend=str(a["backend"]), model=str(a["model"]),
            q0_bulk=float(a["q0_bulk"]), extra=json.loads(a["extra"]), versions=json.loads(a["versions"]),
            created=str(a["created"]), complete=bool(a["complete"]))
        traj.series_step = [int(s) for s in f["series/step"][()]]
        traj.series_xi = [float(x) for x in f["series/xi"][()]]
        traj.frame_step = [int(s) for s in f["frames/step"][()]]
        traj.frame_q = list(f["frames/q"][()])
        traj.frame_force = list(f["frames/force"][()])
        traj.frame_density = list(f["frames/density"][()])
        traj.checkpoint_step = int(f["checkpoint/step"][()])
        traj.checkpoint_q = f["checkpoint/q"][()]
    return traj
