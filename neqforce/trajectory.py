"""HDF5 trajectories of Brownian-dynamics runs: in-place checkpoints, crash-safe, resumable.

One file per run (format ``neqforce.trajectory/2``; ``/1`` files are still read, and upgraded on resume)::

    attrs   format, params (JSON of HolsteinParams), seed, dt, save_every, q0_bulk, versions (JSON),
            created; n_steps, backend, model, complete, extra as of the last whole write
    series/step, series/time, series/xi           every step reached: ξ(t) (time in 1/gamma)
    series/force_std_max                           every step: the largest committee spread of its force
                                                   (force units; -1 no committee, 0 exact NEGF, NaN not
                                                   recorded: files written before it read as NaN)
    frames/step, frames/time, frames/q, frames/force, frames/density   every ``save_every`` steps
                                                   (density is NaN where the backend gave none)
    checkpoint/slots (2, lx, ly)                   two buffers for the resume state Q
    checkpoint/state (2, 65536) uint8              two buffers for the run's changing state (JSON:
                                                   n_steps, backend, model, complete, extra)
    checkpoint/commit int64 [step, series rows, frame rows, slot, state bytes]
                                                   the "last complete step" marker

The series and frame datasets are contiguous and preallocated with room for as many rows again as
they hold. A :meth:`TrajectoryWriter.checkpoint` writes the rows recorded since the previous one, the
resume state and the run state into the slot the marker does *not* name (plain ``pwrite`` at the
datasets' offsets: the HDF5 structure is never modified), ``fdatasync``, then the 40-byte marker —
so its cost does not grow with the run, and a process killed at any moment leaves the previous
checkpoint intact. Readers trust only what the marker names (``extra.wall_time_s``: wall-clock
seconds spent on the run, summed over resumes). When the room is full, the whole file is rewritten
to a temporary name with twice the room and renamed (:mod:`neqforce.atomic`); so is the first write,
and the last: a complete run is stored compact (exact sizes, frames gzip-compressed).

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


class TrajectoryMoved(TrajectoryError):
    """The file a run writes was moved, removed or replaced by someone else while the run was writing it:
    the run stops without writing into whatever is at its path now."""


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


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
    series_force_std_max: list[float] = field(default_factory=list)
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

    def spread_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(time (S,), largest committee spread of each step's force (S,); NaN where not recorded)."""
        return step_times(self.series_step, self.dt), _spreads(self, 0)


@dataclass
class _Layout:
    """Where a ``/2`` file keeps its rows (byte offsets of contiguous datasets), their capacity, and
    what its commit marker says is valid."""

    offsets: dict[str, int]
    series_capacity: int
    frame_capacity: int
    n_series: int
    n_frames: int
    slot: int


class TrajectoryWriter:
    """Collects BD states and checkpoints them to ``path`` (in place, behind a commit marker)."""

    def __init__(self, path: str | os.PathLike[str], trajectory: Trajectory,
                 layout: _Layout | None = None) -> None:
        """``layout``: that of the ``/2`` file at ``path`` holding ``trajectory`` so far; None: the next
        checkpoint writes the whole file."""
        self.path = Path(path)
        self.traj = trajectory
        self._layout = layout
        #: (device, inode) of the file this writer last wrote or read at ``path``; None before the first
        #: write of a new run (which may replace an existing file: --overwrite)
        self._file: tuple[int, int] | None = None
        self._started = time.monotonic()
        self._wall_before = float(trajectory.extra.get("wall_time_s", 0.0))

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> TrajectoryWriter:
        """Reopen an interrupted run; continue from ``writer.traj.checkpoint_step``."""
        traj, layout = _read(Path(path))
        writer = cls(path, traj, layout)
        writer._file = _identity(Path(path))
        return writer

    def record(self, step: int, q: np.ndarray, force: np.ndarray, density: np.ndarray | None,
               xi: float, force_std_max: float = float("nan")) -> None:
        """Record the state at ``step`` (ξ and the force's committee spread always; a frame when
        step % save_every == 0)."""
        t = self.traj
        if len(t.series_force_std_max) != len(t.series_step):  # built without spreads: NaN (not recorded)
            t.series_force_std_max = _spreads(t, 0).tolist()
        t.series_step.append(int(step))
        t.series_xi.append(float(xi))
        t.series_force_std_max.append(float(force_std_max))
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

        Writes the new rows, the resume state and the run's state into preallocated space, then the
        marker (O(new rows)); when the space is full (or there is no ``/2`` file yet) the whole file is
        rewritten atomically with twice the room, so the cost per checkpoint stays O(1) on average.
        """
        self._check_same_file()
        t = self.traj
        t.complete = complete
        t.extra["wall_time_s"] = self._wall_before + time.monotonic() - self._started
        lay = self._layout
        if (complete or lay is None or not self.path.exists() or len(t.series_step) > lay.series_capacity
                or len(t.frame_step) > lay.frame_capacity or len(_state_json(t)) > STATE_CAPACITY):
            self._layout = write_trajectory(self.path, t)
            self._file = _identity(self.path)
        else:
            self._layout = _write_in_place(self.path, t, lay)

    def _check_same_file(self) -> None:
        """TrajectoryMoved unless ``path`` is still the file this writer wrote (a folder renamed under a
        running run, or its file replaced, must not make it write into someone else's file)."""
        if self._file is None:
            return
        try:
            now: tuple[int, int] | None = _identity(self.path)
        except FileNotFoundError:
            now = None
        if now != self._file:
            what = "removed or moved" if now is None else "replaced"
            raise TrajectoryMoved(f"{self.path} was {what} while this run was writing it; stopping without "
                                  f"writing there (the run's last checkpoint is in the file that was at that "
                                  f"path)")


#: Bytes reserved for the run's changing state (n_steps, backend, model, complete, extra) as JSON.
STATE_CAPACITY = 1 << 16
_SERIES = ("step", "time", "xi", "force_std_max")
_FRAMES = ("step", "time", "q", "force", "density")


def _state_json(traj: Trajectory) -> bytes:
    """What changes during a run (the attrs of the same names are those of the last whole write)."""
    return json.dumps({"n_steps": traj.n_steps, "backend": traj.backend, "model": traj.model,
                       "complete": bool(traj.complete), "extra": traj.extra}, sort_keys=True).encode()


def _capacity(rows: int, minimum: int) -> int:
    """Room for ``rows`` rows and as many again (a power of two): rewrites get rarer as a run grows."""
    return max(minimum, 1 << max(0, 2 * rows - 1).bit_length())


#: Most bytes of frames, and most series rows (32 bytes each), a run's file preallocates for the rows its
#: plan (n_steps) will record.
PLANNED_FRAME_BYTES = 64 << 20
PLANNED_SERIES_ROWS = 1 << 18


def _room(traj: Trajectory, n_series: int, n_frames: int) -> tuple[int, int]:
    """Row capacity (series, frames) of a file in progress: room for the rows so far and as many again,
    and at least for every row the run's plan will record (frames up to :data:`PLANNED_FRAME_BYTES`),
    so a run that goes as planned (within those bounds) is never rewritten to grow."""
    lx, ly = traj.params.shape
    steps = max(0, int(traj.n_steps))
    frames = min(steps // max(1, int(traj.save_every)) + 1, PLANNED_FRAME_BYTES // (24 * lx * ly))
    series = min(steps + 1, PLANNED_SERIES_ROWS)
    return max(_capacity(n_series, 1024), series), max(_capacity(n_frames, 16), frames)


def _resume_q(traj: Trajectory) -> np.ndarray:
    return (np.asarray(traj.checkpoint_q, dtype=np.float64) if traj.checkpoint_q is not None
            else np.full(traj.params.shape, np.nan))


def _series_rows(traj: Trajectory, start: int) -> dict[str, np.ndarray]:
    steps = np.asarray(traj.series_step[start:], dtype=np.int64)
    return {"step": steps, "time": step_times(steps, traj.dt),
            "xi": np.asarray(traj.series_xi[start:], dtype=np.float64),
            "force_std_max": _spreads(traj, start)}


def _spreads(traj: Trajectory, start: int) -> np.ndarray:
    """series_force_std_max[start:] as long as the series (NaN where a step has none recorded)."""
    out = np.full(len(traj.series_step) - start, np.nan)
    have = np.asarray(traj.series_force_std_max[start:len(traj.series_step)], dtype=np.float64)
    out[:len(have)] = have
    return out


def _frame_rows(traj: Trajectory, start: int) -> dict[str, np.ndarray]:
    steps = np.asarray(traj.frame_step[start:], dtype=np.int64)
    shape = (0, *traj.params.shape)

    def stack(xs: list[np.ndarray]) -> np.ndarray:
        return np.stack(xs) if xs else np.zeros(shape)

    return {"step": steps, "time": step_times(steps, traj.dt), "q": stack(traj.frame_q[start:]),
            "force": stack(traj.frame_force[start:]), "density": stack(traj.frame_density[start:])}


def write_trajectory(path: str | os.PathLike[str], traj: Trajectory) -> _Layout | None:
    """Write ``traj`` to ``path`` whole, atomically (temporary file in the same folder, then rename).

    A run in progress gets contiguous datasets with room for as many rows again (returns where they
    live, for in-place checkpoints); a complete run is written compact (exact sizes, frames
    gzip-compressed; returns None: extending it rewrites it)."""
    lx, ly = traj.params.shape
    n_series, n_frames = len(traj.series_step), len(traj.frame_step)
    compact = bool(traj.complete)
    cap_s, cap_f = (n_series, n_frames) if compact else _room(traj, n_series, n_frames)
    state = _state_json(traj)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        a = f.attrs
        a["format"] = FORMAT
        a["params"] = traj.params.to_json()
        a["seed"] = traj.seed
        a["dt"] = traj.dt
        a["save_every"] = traj.save_every
        a["q0_bulk"] = traj.q0_bulk
        a["versions"] = json.dumps(traj.versions, sort_keys=True)
        a["created"] = traj.created
        for key, value in json.loads(state).items():  # as of this write; checkpoint/state is current
            a[key] = json.dumps(value, sort_keys=True) if key == "extra" else value
        groups = (("series", _series_rows(traj, 0), cap_s), ("frames", _frame_rows(traj, 0), cap_f))
        for group, rows, cap in groups:
            for name, value in rows.items():
                if compact:
                    frames = value.ndim == 3 and value.size > 0  # byte shuffle: smaller and faster
                    f.create_dataset(f"{group}/{name}", data=value, compression="gzip" if frames else None,
                                     shuffle=frames)
                    continue
                full = np.zeros((cap, *value.shape[1:]), dtype=value.dtype)  # allocated now: contiguous
                full[:len(value)] = value
                f.create_dataset(f"{group}/{name}", data=full)
        slots = np.full((2, lx, ly), np.nan)
        slots[0] = _resume_q(traj)
        f["checkpoint/slots"] = slots
        states = np.zeros((2, STATE_CAPACITY), dtype=np.uint8)
        states[0, :len(state)] = np.frombuffer(state, dtype=np.uint8)
        f["checkpoint/state"] = states
        f["checkpoint/commit"] = np.array([traj.checkpoint_step, n_series, n_frames, 0, len(state)],
                                          dtype=np.int64)
        offsets = None if compact else _offsets(f)
    return None if offsets is None else _Layout(offsets, cap_s, cap_f, n_series, n_frames, 0)


def _offsets(f: h5py.File) -> dict[str, int] | None:
    """Byte offsets in the file of the contiguous datasets a checkpoint writes in place (None for a
    compact file: compressed or exact-size datasets, rewritten whole when extended)."""
    names = ([f"series/{n}" for n in _SERIES] + [f"frames/{n}" for n in _FRAMES]
             + ["checkpoint/slots", "checkpoint/state", "checkpoint/commit"])
    offsets = {}
    for name in names:
        if name not in f:  # written before that dataset existed: the next checkpoint rewrites it whole
            return None
        ds = f[name]
        offset = ds.id.get_offset() if ds.chunks is None else None
        if offset is None:
            return None
        offsets[name] = int(offset)
    return offsets


def _write_in_place(path: Path, traj: Trajectory, lay: _Layout) -> _Layout:
    """Checkpoint by writing bytes into space the file already has: the HDF5 structure is never touched,
    so a process killed here leaves the previous checkpoint intact. Order: rows past the marker, the
    resume state and run state into the slot the marker does not name, fdatasync, then the marker."""
    n_series, n_frames = len(traj.series_step), len(traj.frame_step)
    slot = 1 - lay.slot
    lx, ly = traj.params.shape
    state = _state_json(traj)
    fd = os.open(path, os.O_WRONLY)
    try:
        def put(name: str, row: int, values: np.ndarray) -> None:
            data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
            row_bytes = data.itemsize * int(np.prod(data.shape[1:], dtype=np.int64))
            os.pwrite(fd, data.tobytes(), lay.offsets[name] + row * row_bytes)

        for name, value in _series_rows(traj, lay.n_series).items():
            put(f"series/{name}", lay.n_series, value)
        if n_frames > lay.n_frames:
            for name, value in _frame_rows(traj, lay.n_frames).items():
                put(f"frames/{name}", lay.n_frames, value)
        put("checkpoint/slots", slot, _resume_q(traj).reshape(1, lx, ly))
        os.pwrite(fd, state, lay.offsets["checkpoint/state"] + slot * STATE_CAPACITY)
        os.fdatasync(fd)
        commit = np.array([traj.checkpoint_step, n_series, n_frames, slot, len(state)], dtype="<i8")
        os.pwrite(fd, commit.tobytes(), lay.offsets["checkpoint/commit"])
    finally:
        os.close(fd)
    return _Layout(lay.offsets, lay.series_capacity, lay.frame_capacity, n_series, n_frames, slot)


def read_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file (``/2`` or ``/1``), checking that its contents are consistent.

    Raises :class:`TrajectoryError` (a ValueError) with a one-line reason: not a trajectory,
    damaged, or internally inconsistent (e.g. save_every = 0, a negative resume step, a ξ series
    shorter than the steps it claims, frames that are not every save_every steps).
    """
    return _read(Path(path))[0]


#: Reads of a file whose writer checkpointed meanwhile before :func:`_read` gives up.
READ_ATTEMPTS = 20


def _commit_marker(path: Path) -> tuple[int, ...] | None:
    """The ``checkpoint/commit`` marker as a fresh open reads it now (None: no marker, or unreadable)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            marker = f.get("checkpoint/commit")
            return None if marker is None else tuple(int(x) for x in np.ravel(marker[()]))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _check_commit(path: Path, commit: np.ndarray) -> np.ndarray:
    """``commit`` if it is a well-formed marker ``[step, n_series, n_frames, slot, n_state]``."""
    if commit.shape != (5,):
        raise TrajectoryError(f"{path}: checkpoint/commit must hold 5 integers, has shape {commit.shape}")
    if int(commit[3]) not in (0, 1):
        raise TrajectoryError(f"{path}: checkpoint/commit names slot {int(commit[3])} (must be 0 or 1)")
    if not 0 < int(commit[4]) <= STATE_CAPACITY:
        raise TrajectoryError(f"{path}: checkpoint/commit gives a run state of {int(commit[4])} bytes")
    return commit


def _raw_layout_ok(f: h5py.File, shape: tuple[int, int]) -> bool:
    """Whether the checkpoint datasets have the dtypes and shapes :func:`_write_in_place` writes."""
    slots, state, commit = f["checkpoint/slots"], f["checkpoint/state"], f["checkpoint/commit"]
    return (slots.dtype == np.dtype("<f8") and slots.shape == (2, *shape) and state.dtype == np.uint8
            and state.shape == (2, STATE_CAPACITY) and commit.dtype == np.dtype("<i8")
            and commit.shape == (5,))


def _read_slot_raw(path: Path, f: h5py.File, offsets: dict[str, int], shape: tuple[int, int]
                   ) -> tuple[np.ndarray, bytes, np.ndarray]:
    """Marker, run state and resume Q of a file laid out for in-place checkpoints, read as raw bytes at
    their offsets (the bytes :func:`_write_in_place` writes; no HDF5 cache in between): marker, slot,
    marker again, all within microseconds. A moved marker means a checkpoint overlapped (:class:`_Torn`).
    The bytes come through ``f``'s own descriptor: the file the offsets belong to, even if a finished run
    has meanwhile renamed its compact rewrite onto ``path``."""
    n_q = int(np.prod(shape)) * 8
    fd = f.id.get_vfd_handle()  # owned by h5py; pread leaves its file position alone

    def marker() -> np.ndarray:
        return np.frombuffer(os.pread(fd, 40, offsets["checkpoint/commit"]), dtype="<i8").astype(np.int64)

    commit = _check_commit(path, marker())
    slot, n_state = int(commit[3]), int(commit[4])
    state = os.pread(fd, n_state, offsets["checkpoint/state"] + slot * STATE_CAPACITY)
    raw_q = os.pread(fd, n_q, offsets["checkpoint/slots"] + slot * n_q)
    if not np.array_equal(marker(), commit):
        raise _Torn(f"{path}: checkpointed while read")
    if len(state) != n_state or len(raw_q) != n_q:
        raise TrajectoryError(f"{path}: damaged or incomplete trajectory file (checkpoint slot cut short)")
    return commit, state, np.frombuffer(raw_q, dtype="<f8").reshape(shape).astype(np.float64)


class _Torn(TrajectoryError):
    """The run checkpointed while the resume and run state were read: read again."""


def _read(path: Path) -> tuple[Trajectory, _Layout | None]:
    """Read a trajectory, consistently even while its run is checkpointing it (see :func:`_read_open`)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return _read_once(path)
        except _Torn:
            time.sleep(0.001 * attempt)
    raise TrajectoryError(f"{path}: the run checkpointed during each of {READ_ATTEMPTS} reads; read it again")


def _read_once(path: Path) -> tuple[Trajectory, _Layout | None]:
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


def _read_open(path: Path, f: h5py.File) -> tuple[Trajectory, _Layout | None]:
    """The trajectory and its row layout. A ``/2`` file's marker names the slot of the resume and run state;
    a running writer rewrites a slot only after the marker has left it, so the marker is read again right
    after the slot (a seqlock; raw bytes at their offsets, :func:`_read_slot_raw`, or through a fresh open for
    a compact file): if it moved, the slot may be torn (:class:`_Torn`). Rows
    below the marker's counts are never rewritten, so the rest of the read needs no check."""
    a = f.attrs
    fmt = a.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt not in FORMATS:
        raise TrajectoryError(f"{path} is not a neqforce trajectory (format {fmt!r})")
    params = HolsteinParams.from_json(a["params"])
    mutable = {"n_steps": int(a["n_steps"]), "backend": str(a["backend"]), "model": str(a["model"]),
               "complete": bool(a["complete"]), "extra": json.loads(a["extra"])}
    layout = None
    if fmt == FORMAT:
        offsets = _offsets(f)
        if offsets is not None and _raw_layout_ok(f, params.shape):
            commit, state, q = _read_slot_raw(path, f, offsets, params.shape)
        else:  # compact (a complete run, never written in place again) or an unusual layout
            commit = _check_commit(path, np.asarray(f["checkpoint/commit"][()], dtype=np.int64))
            slot, n_state = int(commit[3]), int(commit[4])
            state = bytes(f["checkpoint/state"][slot, :n_state])
            q = f["checkpoint/slots"][slot]
            if _commit_marker(path) != tuple(int(x) for x in commit):
                raise _Torn(f"{path}: checkpointed while read")
        step, n_series, n_frames, slot, n_state = (int(x) for x in commit)
        try:
            mutable = json.loads(state)
        except ValueError:
            raise TrajectoryError(f"{path}: the run state (checkpoint/state) is not valid JSON") from None
        if offsets is not None:
            layout = _Layout(offsets, len(f["series/step"]), len(f["frames/step"]), n_series, n_frames, slot)
    else:
        step, q = int(f["checkpoint/step"][()]), f["checkpoint/q"][()]
        n_series, n_frames = len(f["series/step"]), len(f["frames/step"])
    traj = Trajectory(
        params=params, seed=int(a["seed"]), dt=float(a["dt"]), save_every=int(a["save_every"]),
        n_steps=int(mutable["n_steps"]), backend=str(mutable["backend"]), model=str(mutable["model"]),
        q0_bulk=float(a["q0_bulk"]), extra=dict(mutable["extra"]), versions=json.loads(a["versions"]),
        created=str(a["created"]), complete=bool(mutable["complete"]))
    for name in ("series/step", "series/xi"):
        if len(f[name]) < n_series:
            raise TrajectoryError(f"{path}: {name} has {len(f[name])} rows, the checkpoint says {n_series} "
                                  f"(truncated file)")
    for name in ("frames/step", "frames/q", "frames/force", "frames/density"):
        if len(f[name]) < n_frames:
            raise TrajectoryError(f"{path}: {name} has {len(f[name])} frames, the checkpoint says {n_frames} "
                                  f"(truncated file)")
    if n_series < 0 or n_frames < 0:
        raise TrajectoryError(f"{path}: negative row counts in checkpoint/commit")
    traj.series_step = f["series/step"][:n_series].astype(np.int64).tolist()
    traj.series_xi = f["series/xi"][:n_series].astype(np.float64).tolist()
    spread = f.get("series/force_std_max")
    traj.series_force_std_max = (spread[:n_series].astype(np.float64).tolist() if spread is not None
                                 and len(spread) >= n_series else [float("nan")] * n_series)
    traj.frame_step = f["frames/step"][:n_frames].astype(np.int64).tolist()
    traj.frame_q = list(f["frames/q"][:n_frames])
    traj.frame_force = list(f["frames/force"][:n_frames])
    traj.frame_density = list(f["frames/density"][:n_frames])
    traj.checkpoint_step = step
    traj.checkpoint_q = np.asarray(q, dtype=np.float64)
    check_consistent(traj, str(path))
    return traj, layout


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
