"""HDF5 trajectories of Brownian-dynamics runs: append-only checkpoints, crash-safe, resumable.

One file per run (format ``neqforce.trajectory/2``; ``/1`` files are still read)::

    attrs   format, params (JSON of HolsteinParams), seed, dt, save_every, n_steps (planned),
            backend, model, q0_bulk, versions (JSON), created, complete (bool),
            extra (JSON; wall_time_s = wall-clock seconds spent on the run, summed over resumes)
    series/step, series/time, series/xi           every step reached: ξ(t) (time in 1/gamma)
    frames/step, frames/time, frames/q, frames/force, frames/density   every ``save_every`` steps
                                                   (density is NaN where the backend gave none)
    checkpoint/slots (2, lx, ly)                   two buffers for the resume state Q
    checkpoint/commit int64 [step, series rows, frame rows, slot]   the "last complete step" marker

Datasets are resizable: a :meth:`TrajectoryWriter.checkpoint` appends only the rows recorded since
the previous one, writes the resume state into the slot *not* named by the marker, flushes, then
rewrites the 32-byte marker and flushes again, so its cost does not grow with the run. Readers
trust only what the marker names (rows past it are leftovers of an interrupted checkpoint and are
overwritten by the next one). The file is closed between checkpoints, so a process killed between
them leaves it exactly as of the last marker. The first write of a run (and the first checkpoint of
a resumed ``/1`` file) writes the whole file to a temporary name and renames it
(:mod:`neqforce.atomic`).

``/1`` layout: the same attrs, fixed-size datasets and ``checkpoint/step``, ``checkpoint/q``.
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

FORMAT = "neqforce.trajectory/2"
#: The previous format (whole file rewritten at each checkpoint): read, and upgraded on resume.
FORMAT_V1 = "neqforce.trajectory/1"
FORMATS = (FORMAT, FORMAT_V1)
#: Rows per chunk of the ξ(t) series (a chunk is 8 KiB per dataset).
SERIES_CHUNK = 1024


class TrajectoryError(ValueError):
    """A trajectory file that is not one, or whose contents contradict each other (one-line message)."""


def step_times(steps: np.ndarray | list[int], dt: float) -> np.ndarray:
    """t = step·dt (1/gamma), rounded to the precision of dt (+6 digits): 0.3, not 0.30000000000000004."""
    decimals = max(0, int(np.ceil(-np.log10(dt)))) + 6 if dt > 0 else 12
    return np.round(np.asarray(steps, dtype=np.int64) * float(dt), decimals)


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
        return {"step": steps, "time": step_times(steps, self.dt), "q": stack(self.frame_q),
                "force": stack(self.frame_force), "density": stack(self.frame_density)}

    def xi_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(time (S,), ξ (S,)) for every step reached."""
        return step_times(self.series_step, self.dt), np.asarray(self.series_xi, dtype=np.float64)


class TrajectoryWriter:
    """Collects BD states and checkpoints them to ``path`` (append-only after the first write)."""

    def __init__(self, path: str | os.PathLike[str], trajectory: Trajectory,
                 on_disk: tuple[int, int, int] | None = None) -> None:
        """``on_disk``: (series rows, frame rows, slot) of the marker of the ``/2`` file at ``path``
        that holds ``trajectory`` so far; None: the next checkpoint writes the whole file."""
        self.path = Path(path)
        self.traj = trajectory
        self._on_disk = on_disk
        self._started = time.monotonic()
        self._wall_before = float(trajectory.extra.get("wall_time_s", 0.0))

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> TrajectoryWriter:
        """Reopen an interrupted run; continue from ``writer.traj.checkpoint_step``."""
        traj, on_disk = _read(Path(path))
        return cls(path, traj, on_disk)

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
        """Make everything recorded so far durable; mark complete at the end of the run.

        Appends the new rows in place (O(new rows)); the first checkpoint of a writer without an
        up-to-date ``/2`` file on disk writes the whole file atomically instead.
        """
        self.traj.complete = complete
        self.traj.extra["wall_time_s"] = self._wall_before + time.monotonic() - self._started
        if self._on_disk is None or not self.path.exists():
            write_trajectory(self.path, self.traj)
            self._on_disk = (len(self.traj.series_step), len(self.traj.frame_step), 0)
        else:
            self._on_disk = _append(self.path, self.traj, self._on_disk)


def _attrs(a: Any, traj: Trajectory, mutable_only: bool = False) -> None:
    if not mutable_only:
        a["format"] = FORMAT
        a["params"] = traj.params.to_json()
        a["seed"] = traj.seed
        a["dt"] = traj.dt
        a["save_every"] = traj.save_every
        a["q0_bulk"] = traj.q0_bulk
        a["versions"] = json.dumps(traj.versions, sort_keys=True)
        a["created"] = traj.created
    a["n_steps"] = traj.n_steps
    a["backend"] = traj.backend
    a["model"] = traj.model
    a["complete"] = bool(traj.complete)
    a["extra"] = json.dumps(traj.extra, sort_keys=True)


def _resume_q(traj: Trajectory) -> np.ndarray:
    return (np.asarray(traj.checkpoint_q, dtype=np.float64) if traj.checkpoint_q is not None
            else np.full(traj.params.shape, np.nan))


def write_trajectory(path: str | os.PathLike[str], traj: Trajectory) -> None:
    """Write ``traj`` to ``path`` whole, atomically (temporary file in the same folder, then rename)."""
    lx, ly = traj.params.shape
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _attrs(f.attrs, traj)
        steps = np.asarray(traj.series_step, dtype=np.int64)
        series = {"step": steps, "time": step_times(steps, traj.dt),
                  "xi": np.asarray(traj.series_xi, dtype=np.float64)}
        for name, value in series.items():
            f.create_dataset(f"series/{name}", data=value, maxshape=(None,), chunks=(SERIES_CHUNK,))
        for name, value in traj.frames().items():
            if value.ndim == 1:
                f.create_dataset(f"frames/{name}", data=value, maxshape=(None,), chunks=(256,))
            else:
                f.create_dataset(f"frames/{name}", data=value, maxshape=(None, lx, ly), chunks=(1, lx, ly),
                                 compression="gzip")
        slots = np.full((2, lx, ly), np.nan)
        slots[0] = _resume_q(traj)
        f["checkpoint/slots"] = slots
        f["checkpoint/commit"] = np.array([traj.checkpoint_step, len(steps), len(traj.frame_step), 0],
                                          dtype=np.int64)


def _append(path: Path, traj: Trajectory, on_disk: tuple[int, int, int]) -> tuple[int, int, int]:
    """Append the rows recorded since ``on_disk`` and move the marker; returns the new marker."""
    n_series, n_frames, slot = on_disk
    new_series, new_frames = len(traj.series_step), len(traj.frame_step)
    with h5py.File(path, "r+", locking=False) as f:
        if n_series != new_series:
            steps = np.asarray(traj.series_step[n_series:], dtype=np.int64)
            rows = {"step": steps, "time": step_times(steps, traj.dt),
                    "xi": np.asarray(traj.series_xi[n_series:], dtype=np.float64)}
            for name, value in rows.items():
                ds = f[f"series/{name}"]
                ds.resize((new_series,))
                ds[n_series:] = value
        if n_frames != new_frames:
            steps = np.asarray(traj.frame_step[n_frames:], dtype=np.int64)
            rows = {"step": steps, "time": step_times(steps, traj.dt),
                    "q": np.stack(traj.frame_q[n_frames:]), "force": np.stack(traj.frame_force[n_frames:]),
                    "density": np.stack(traj.frame_density[n_frames:])}
            for name, value in rows.items():
                ds = f[f"frames/{name}"]
                ds.resize(new_frames, axis=0)
                ds[n_frames:] = value
        slot = 1 - slot
        f["checkpoint/slots"][slot] = _resume_q(traj)
        _attrs(f.attrs, traj, mutable_only=True)
        f.flush()
        f["checkpoint/commit"][...] = np.array([traj.checkpoint_step, new_series, new_frames, slot],
                                               dtype=np.int64)
        f.flush()
    return new_series, new_frames, slot


def read_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file (``/2`` or ``/1``), checking that its contents are consistent.

    Raises :class:`TrajectoryError` (a ValueError) with a one-line reason: not a trajectory,
    damaged, or internally inconsistent (e.g. save_every = 0, a negative resume step, a ξ series
    shorter than the steps it claims, frames that are not every save_every steps).
    """
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[Trajectory, tuple[int, int, int] | None]:
    if not path.exists():
        raise TrajectoryError(f"trajectory file not found: {path}")
    try:
        f = h5py.File(path, "r", locking=False)  # a reader must never block the run's next checkpoint
    except OSError as exc:
        raise TrajectoryError(f"{path} is not a readable HDF5 file: {exc}") from None
    try:
        with f:
            return _read_open(path, f)
    except TrajectoryError:
        raise
    except (KeyError, OSError, TypeError, ValueError, IndexError) as exc:
        raise TrajectoryError(f"{path}: damaged or incomplete trajectory file ({exc})") from None


def _read_open(path: Path, f: h5py.File) -> tuple[Trajectory, tuple[int, int, int] | None]:
    a = f.attrs
    fmt = a.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt not in FORMATS:
        raise TrajectoryError(f"{path} is not a neqforce trajectory (format {fmt!r})")
    params = HolsteinParams.from_json(a["params"])
    traj = Trajectory(
        params=params, seed=int(a["seed"]), dt=float(a["dt"]), save_every=int(a["save_every"]),
        n_steps=int(a["n_steps"]), backend=str(a["backend"]), model=str(a["model"]),
        q0_bulk=float(a["q0_bulk"]), extra=json.loads(a["extra"]), versions=json.loads(a["versions"]),
        created=str(a["created"]), complete=bool(a["complete"]))
    if fmt == FORMAT:
        commit = np.asarray(f["checkpoint/commit"][()], dtype=np.int64)
        if commit.shape != (4,):
            raise TrajectoryError(f"{path}: checkpoint/commit must hold 4 integers, has shape {commit.shape}")
        step, n_series, n_frames, slot = (int(x) for x in commit)
        if slot not in (0, 1):
            raise TrajectoryError(f"{path}: checkpoint/commit names slot {slot} (must be 0 or 1)")
        on_disk: tuple[int, int, int] | None = (n_series, n_frames, slot)
        q = f["checkpoint/slots"][slot]
    else:
        step, q, on_disk = int(f["checkpoint/step"][()]), f["checkpoint/q"][()], None
        n_series, n_frames = len(f["series/step"]), len(f["frames/step"])
    for name in ("series/step", "series/xi"):
        if len(f[name]) < n_series:
            raise TrajectoryError(f"{path}: {name} has {len(f[name])} rows, the checkpoint says {n_series} "
                                  f"(truncated file)")
    for name in ("frames/step", "frames/q", "frames/force", "frames/density"):
        if len(f[name]) < n_frames:
            raise TrajectoryError(f"{path}: {name} has {len(f[name])} frames, the checkpoint says {n_frames} "
                                  f"(truncated file)")
    traj.series_step = f["series/step"][:n_series].astype(np.int64).tolist()
    traj.series_xi = f["series/xi"][:n_series].astype(np.float64).tolist()
    traj.frame_step = f["frames/step"][:n_frames].astype(np.int64).tolist()
    traj.frame_q = list(f["frames/q"][:n_frames])
    traj.frame_force = list(f["frames/force"][:n_frames])
    traj.frame_density = list(f["frames/density"][:n_frames])
    traj.checkpoint_step = step
    traj.checkpoint_q = np.asarray(q, dtype=np.float64)
    check_consistent(traj, str(path))
    return traj, on_disk


def check_consistent(traj: Trajectory, where: str = "trajectory") -> None:
    """Raise TrajectoryError (one line) unless ``traj`` is internally consistent: settings in range,
    ξ recorded for every step 0..checkpoint_step exactly once, frames every save_every steps."""
    def bad(what: str) -> TrajectoryError:
        return TrajectoryError(f"{where}: {what} (the file was modified or damaged; start a new run)")

    if traj.save_every < 1:
        raise bad(f"save_every = {traj.save_every} (must be >= 1)")
    if not (np.isfinite(traj.dt) and traj.dt > 0):
        raise bad(f"dt = {traj.dt} (must be > 0)")
    if traj.n_steps < 0:
        raise bad(f"n_steps = {traj.n_steps} (must be >= 0)")
    last = traj.checkpoint_step
    if last < -1:
        raise bad(f"checkpoint step = {last} (must be >= -1)")
    if last > traj.n_steps:
        raise bad(f"checkpoint step {last} is past the run's {traj.n_steps} steps")
    if traj.checkpoint_q is None or traj.checkpoint_q.shape != traj.params.shape:
        shape = None if traj.checkpoint_q is None else traj.checkpoint_q.shape
        raise bad(f"resume state has shape {shape}, the lattice is {traj.params.shape}")
    if not np.all(np.isfinite(traj.checkpoint_q)):
        raise bad("resume state Q contains NaN or Inf")
    steps = np.asarray(traj.series_step, dtype=np.int64)
    if len(traj.series_xi) != len(steps):
        raise bad(f"series/xi has {len(traj.series_xi)} rows for {len(steps)} steps")
    if not np.array_equal(steps, np.arange(last + 1)):
        raise bad(f"series/step is not 0..{last} ({len(steps)} rows, checkpoint step {last})")
    frames = np.asarray(traj.frame_step, dtype=np.int64)
    expected = np.arange(0, last + 1, traj.save_every)
    if not np.array_equal(frames, expected):
        raise bad(f"frames/step holds {len(frames)} frames, expected every {traj.save_every} steps up to "
                  f"{last} ({len(expected)} frames)")
    for name, arrays in (("q", traj.frame_q), ("force", traj.frame_force), ("density", traj.frame_density)):
        if any(np.shape(x) != traj.params.shape for x in arrays):
            raise bad(f"frames/{name} does not have the lattice shape {traj.params.shape}")
    if traj.complete and last != traj.n_steps:
        raise bad(f"marked complete at step {last} of {traj.n_steps}")
