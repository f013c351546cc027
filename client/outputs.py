"""Files the client reads and writes: run output names, ξ(t) CSV, configurations in, forces out.

Arrays are (lx, ly) with x the transport direction (docs/physics.md). Every file is written to a temporary
name in the target folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from neqforce.atomic import atomic_path, atomic_write_bytes
from neqforce.physics import HolsteinParams
from neqforce.trajectory import FORMATS as TRAJECTORY_FORMATS
from neqforce.trajectory import Trajectory, read_trajectory, software_versions

FORCES_FORMAT = "neqforce.forces/1"
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class RunOutputs:
    """Where a simulation writes: a folder (``runs/sim/trajectory.h5``, ``xi.csv``, ``density.png``,
    ``xi.png``) or, when ``out`` ends in .h5, files beside it (``runs/a.h5``, ``runs/a_xi.csv``, …)."""

    trajectory: Path
    xi_csv: Path
    density_png: Path
    xi_png: Path

    @classmethod
    def at(cls, out: str | os.PathLike[str]) -> RunOutputs:
        out = Path(out)
        if out.suffix.lower() in H5_SUFFIXES:
            stem = out.with_suffix("")
            return cls(out, Path(f"{stem}_xi.csv"), Path(f"{stem}_density.png"), Path(f"{stem}_xi.png"))
        return cls(out / "trajectory.h5", out / "xi.csv", out / "density.png", out / "xi.png")

    def all(self) -> tuple[Path, ...]:
        return (self.trajectory, self.xi_csv, self.density_png, self.xi_png)


def write_xi_csv(path: str | os.PathLike[str], traj: Trajectory) -> Path:
    """ξ(t) table: step, time (1/gamma), xi (metallic fraction), metallic_columns (= xi * lx)."""
    time, xi = traj.xi_series()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "time", "xi", "metallic_columns"])
    for step, t, x in zip(traj.series_step, time, xi, strict=True):
        w.writerow([step, repr(float(t)), repr(float(x)), int(round(x * traj.params.lx))])
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_xi_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Columns of a ξ(t) CSV as arrays."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"step": np.array([int(r["step"]) for r in rows], dtype=np.int64),
            "time": np.array([float(r["time"]) for r in rows]),
            "xi": np.array([float(r["xi"]) for r in rows])}


def read_trajectory_checked(path: str | os.PathLike[str]) -> Trajectory:
    """:func:`read_trajectory`, with a damaged file (missing datasets) reported as ValueError."""
    try:
        return read_trajectory(path)
    except (KeyError, OSError) as exc:
        raise ValueError(f"{path}: damaged or incomplete trajectory file ({exc})") from None


@dataclass(frozen=True)
class Configuration:
    """A lattice configuration Q (lx, ly) read from a file, with the parameters stored beside it."""

    q: np.ndarray
    params: HolsteinParams | None
    source: str


def _as_configuration(arr: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{source}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"{source}: expected a 2-D array Q[x, y] of shape (lx, ly), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{source}: Q contains NaN or Inf (first at x={bad[0]}, y={bad[1]})")
    return arr


#: Largest configuration read from a file (sites); far above any lattice a server accepts.
MAX_CONFIGURATION_SITES = 1 << 24


def _check_npy_header(path: Path) -> None:
    """Check a .npy header before reading the data: a 2-D real array whose data the file really holds
    (a header claiming (100000, 100000) must not make NumPy allocate 80 GB)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # 3.0 only adds UTF-8 field names of structured arrays: never a configuration
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable .npy array: {' '.join(str(exc).split())}") from None
    if len(shape) != 2:
        raise ValueError(f"{path}: expected a 2-D array Q[x, y] of shape (lx, ly), got shape {shape}")
    if dtype.hasobject or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{path}: expected a real numeric array, got dtype {dtype}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_CONFIGURATION_SITES:
        raise ValueError(f"{path}: shape {shape} has {n} sites (at most {MAX_CONFIGURATION_SITES} are read)")
    need, have = n * dtype.itemsize, path.stat().st_size - offset
    if have < need:
        raise ValueError(f"{path}: the header says shape {shape} ({need} bytes of {dtype}) but the file "
                         f"holds {have} bytes (truncated or damaged)")


def load_configuration(path: str | os.PathLike[str], frame: int | None = None) -> Configuration:
    """Q from a .npy array (lx, ly), a trajectory .h5 or a forces .h5 written by ``neqforce forces``.

    For a trajectory, ``frame`` indexes the saved frames (negative counts from the end); None
    means the last state reached (its checkpoint). Raises ValueError with a readable message.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"configuration file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if frame is not None:
            raise ValueError("--frame applies to .h5 trajectories, not to .npy files")
        _check_npy_header(path)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, MemoryError) as exc:
            raise ValueError(f"{path} is not a readable .npy array: {exc}") from None
        return Configuration(_as_configuration(arr, str(path)), None, str(path))
    if suffix not in H5_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .npy or .h5)")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file: {exc}") from None
    with fh:
        fmt = fh.attrs.get("format")
    if fmt in TRAJECTORY_FORMATS:
        traj = read_trajectory_checked(path)
        if frame is None:
            q, what = traj.checkpoint_q, f"step {traj.checkpoint_step}"
            if traj.checkpoint_step < 0:
                what = "initial state"
        else:
            n = len(traj.frame_q)
            if not -n <= frame < n:
                raise ValueError(f"{path}: frame {frame} out of range ({n} saved frames)")
            q, what = traj.frame_q[frame], f"frame {frame} (step {traj.frame_step[frame]})"
        return Configuration(_as_configuration(q, f"{path} {what}"), traj.params, f"{path} {what}")
    if fmt == FORCES_FORMAT:
        try:
            with h5py.File(path, "r") as fh:
                q = fh["q"][()]
                params = HolsteinParams.from_json(fh.attrs["params"])
        except (KeyError, OSError) as exc:
            raise ValueError(f"{path}: damaged forces file ({exc})") from None
        return Configuration(_as_configuration(q, str(path)), params, str(path))
    raise ValueError(f"{path} is neither a neqforce trajectory nor a forces file (format {fmt!r})")


def write_forces(path: str | os.PathLike[str], q: np.ndarray, force: np.ndarray,
                 density: np.ndarray | None, params: HolsteinParams, backend: str = "", model: str = "",
                 extra: dict | None = None) -> Path:
    """Save one force evaluation: .npy holds F (lx, ly) only; .h5 holds q, force, density (NaN if
    the backend gave none) and attrs format, params (JSON), backend, model, versions, extra."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(force, dtype=np.float64))
        return atomic_write_bytes(path, buf.getvalue())
    if suffix not in H5_SUFFIXES:
        raise ValueError(f"{path}: unsupported output type {suffix!r} (use .npy or .h5)")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["format"] = FORCES_FORMAT
        fh.attrs["params"] = params.to_json()
        fh.attrs["backend"] = backend
        fh.attrs["model"] = model
        fh.attrs["versions"] = json.dumps(software_versions(), sort_keys=True)
        fh.attrs["extra"] = json.dumps(extra or {}, sort_keys=True)
        fh["q"] = np.asarray(q, dtype=np.float64)
        fh["force"] = np.asarray(force, dtype=np.float64)
        fh["density"] = (np.full(params.shape, np.nan) if density is None
                         else np.asarray(density, dtype=np.float64))
    return path


def read_forces(path: str | os.PathLike[str]) -> dict:
    """Contents of a forces .h5 file: q, force, density arrays and params, backend, model."""
    with h5py.File(path, "r") as fh:
        if fh.attrs.get("format") != FORCES_FORMAT:
            raise ValueError(f"{path} is not a neqforce forces file")
        return {"q": fh["q"][()], "force": fh["force"][()], "density": fh["density"][()],
                "params": HolsteinParams.from_json(fh.attrs["params"]), "backend": str(fh.attrs["backend"]),
                "model": str(fh.attrs["model"]), "extra": json.loads(fh.attrs["extra"])}
