"""Training data from NEGF-BD trajectories: trajectory split, frames, targets, region labels.

The model learns only the electronic force y_i = F_i - (-k Q_i - kappa Σ_nn Q_j) = g (n_i - 1/2);
the elastic part is exact. Splits are **by trajectory**: test trajectories are never seen in training.
A voltage-range model trains on several voltages and lattice lengths at once: frames are grouped by
lattice shape (:func:`frame_groups`), each frame carries its voltage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neqforce.physics import HolsteinParams, elastic_force
from neqforce.trajectory import Trajectory

from .descriptors import R_CUT

#: Region names of the per-region metrics (near = within r_c = 6 columns of an electrode column).
REGIONS = ("bulk", "near_left", "near_right")


def traj_id(t: Trajectory) -> str:
    """Stable name of a trajectory: its file stem (e.g. ``V3.000_s4``; for the ``trajectory.h5`` of a
    ``neqforce sweep`` run, its point and seed folders: ``lx=60,voltage=2.5/seed0``), else voltage and seed;
    with several lattice shapes in one set, qualified by the lattice (``60x28/…``, :func:`qualify_ids`)."""
    if t.extra.get("id"):
        return str(t.extra["id"])
    f = t.extra.get("file")
    if not f:
        return f"V{t.params.voltage:.3f}_s{t.seed}"
    parts = Path(f).with_suffix("").parts
    if parts[-1] == "trajectory" and len(parts) >= 3:  # `neqforce sweep`/`simulate` layout: POINT/seedN/
        return f"{parts[-3]}/{parts[-2]}"
    return parts[-1]


def select_voltage(trajs: Sequence[Trajectory], voltage: float | None,
                   voltage_range: tuple[float, float] | None = None) -> list[Trajectory]:
    """Trajectories at one voltage, or with V in ``voltage_range`` = (min, max), or all of them (both None).
    They must share every physical parameter but the voltage; several voltages only with a range or all."""
    if voltage is not None and voltage_range is not None:
        raise ValueError("give either one voltage or a voltage range, not both")
    if voltage_range is not None and not voltage_range[0] <= voltage_range[1]:
        raise ValueError(f"empty voltage range {voltage_range[0]:g}..{voltage_range[1]:g}")
    lo, hi = voltage_range if voltage_range is not None else (-np.inf, np.inf)
    out = [t for t in trajs if (voltage is None or abs(t.params.voltage - voltage) < 1e-9)
           and lo - 1e-9 <= t.params.voltage <= hi + 1e-9]
    if not out:
        what = f"voltage {voltage}" if voltage is not None else (
            f"voltages {voltage_range[0]:g}..{voltage_range[1]:g}" if voltage_range else "any voltage")
        raise ValueError(f"no trajectory at {what}")
    phys = {tuple(sorted((k, v) for k, v in t.params.physical().items() if k != "voltage")) for t in out}
    if len(phys) > 1:
        raise ValueError("trajectories with different physical parameters (other than the voltage): "
                         "train on one parameter set")
    return out


def voltages_of(trajs: Sequence[Trajectory]) -> list[float]:
    """The distinct voltages of trajectories, sorted."""
    return sorted({round(float(t.params.voltage), 9) for t in trajs})


def qualify_ids(trajs: Sequence[Trajectory]) -> list[Trajectory]:
    """Give each trajectory a unique id: the file stem, prefixed by its lattice (``60x28/V3.000_s0``)
    when the set holds several lattice shapes. ValueError when two trajectories still share an id."""
    shapes = {t.params.shape for t in trajs}
    if len(shapes) > 1:
        for t in trajs:
            t.extra = {**t.extra, "id": None}
            t.extra["id"] = f"{t.params.lx}x{t.params.ly}/{traj_id(t)}"
    ids = [traj_id(t) for t in trajs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"several trajectories named {', '.join(dup[:4])}: give each (voltage, seed, "
                         "lattice) once (two dataset folders hold the same run?)")
    return list(trajs)


def split_by_trajectory(trajs: Sequence[Trajectory], test_fraction: float = 0.3,
                        test_ids: Sequence[str] | None = None) -> tuple[list[Trajectory], list[Trajectory]]:
    """(train, test): the last round(test_fraction · n) trajectories by (voltage, seed), or ``test_ids``."""
    ordered = sorted(trajs, key=lambda t: (t.params.voltage, t.seed, traj_id(t)))
    if test_ids:
        test = [t for t in ordered if traj_id(t) in set(test_ids)]
        missing = set(test_ids) - {traj_id(t) for t in test}
        if missing:
            raise ValueError(f"test trajectories not in the data: {', '.join(sorted(missing))}")
    else:
        n_test = int(round(test_fraction * len(ordered)))
        if test_fraction > 0 and len(ordered) > 1:
            n_test = min(max(n_test, 1), len(ordered) - 1)
        test = ordered[len(ordered) - n_test:] if n_test else []
    train = [t for t in ordered if t not in test]
    if not train:
        raise ValueError("no training trajectory left after the split")
    return train, test


@dataclass
class Frames:
    """Stacked frames of several trajectories (float32 for training)."""

    q: np.ndarray  # (S, lx, ly)
    force: np.ndarray  # (S, lx, ly) total NEGF force
    electronic: np.ndarray  # (S, lx, ly) g (n - 1/2) = F - elastic
    step: np.ndarray  # (S,)
    traj: np.ndarray  # (S,) index into ``ids``
    ids: list[str]
    params: HolsteinParams  # of the first trajectory (the voltage may differ per frame)
    voltage: np.ndarray | None = None  # (S,) float32 voltage of each frame

    def __post_init__(self) -> None:
        if self.voltage is None:
            self.voltage = np.full(len(self.q), self.params.voltage, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.q)

    def subset(self, mask: np.ndarray) -> Frames:
        return Frames(self.q[mask], self.force[mask], self.electronic[mask], self.step[mask], self.traj[mask],
                      self.ids, self.params, self.voltage[mask])


def frames_of(trajs: Sequence[Trajectory], stride: int = 1, max_step: int | None = None) -> Frames:
    """Frames (every ``stride``-th) of trajectories with one lattice shape and parameter set."""
    if not trajs:
        raise ValueError("no trajectories")
    qs, fs, es, steps, idx, vs = [], [], [], [], [], []
    for i, t in enumerate(trajs):
        fr = t.frames()
        sel = slice(None, None, stride)
        q, f, st = fr["q"][sel], fr["force"][sel], fr["step"][sel]
        if max_step is not None:
            keep = st <= max_step
            q, f, st = q[keep], f[keep], st[keep]
        if q.shape[1:] != trajs[0].params.shape:
            raise ValueError("trajectories of different lattice shapes cannot be stacked")
        qs.append(q)
        fs.append(f)
        es.append(f - elastic_force(q, t.params))
        steps.append(st)
        idx.append(np.full(len(q), i))
        vs.append(np.full(len(q), t.params.voltage, dtype=np.float32))
    return Frames(q=np.concatenate(qs).astype(np.float32), force=np.concatenate(fs),
                  electronic=np.concatenate(es).astype(np.float32), step=np.concatenate(steps),
                  traj=np.concatenate(idx), ids=[traj_id(t) for t in trajs], params=trajs[0].params,
                  voltage=np.concatenate(vs))


def frame_groups(trajs: Sequence[Trajectory], stride: int = 1, max_step: int | None = None) -> list[Frames]:
    """:func:`frames_of` per lattice shape (sorted by (lx, ly)); voltages may differ within a group."""
    shapes = sorted({t.params.shape for t in trajs})
    return [frames_of([t for t in trajs if t.params.shape == s], stride=stride, max_step=max_step)
            for s in shapes]


def validation_mask(steps: np.ndarray, block: int = 25, every: int = 5) -> np.ndarray:
    """Frames held out for early stopping: whole blocks of ``block`` steps, one block in ``every``."""
    return (steps // block) % every == every - 1


def training_validation_mask(steps: np.ndarray) -> np.ndarray:
    """The frames training holds out for early stopping in a group of frames: the validation blocks of
    :func:`validation_mask`, or, for a group with no frame in a block or only such frames (labelled-frames
    files number their frames 0, 1, 2, …), every fifth frame."""
    vmask = validation_mask(steps)
    if vmask.all() or not vmask.any():
        vmask = np.arange(len(steps)) % 5 == 4
    return vmask


def region_of_column(lx: int, r_cut: int = R_CUT) -> np.ndarray:
    """Region label per column x: 1 near the left electrode (x < r_c), 2 near the right one
    (lx-1-x < r_c), else 0 (bulk). On narrow lattices the left label wins."""
    x = np.arange(lx)
    lab = np.zeros(lx, dtype=np.int64)
    lab[lx - 1 - x < r_cut] = 2
    lab[x < r_cut] = 1
    return lab
