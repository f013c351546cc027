"""``neqforce dataset label``: exact NEGF labels of chosen frames of existing trajectories.

An ML-BD run (``simulate``/``sweep`` on a model) visits configurations cheaply; labelling a few of its
frames with exact NEGF gives training or test data on lattices where NEGF-BD itself is out of reach
(an 80×28 device costs ~35 s per NEGF solve). Frames are chosen by their number of metallic columns
(``metallic_columns``: mean_y |m| < q0/2) and thinned to at most ``per_run`` per trajectory, evenly spread
over the eligible ones. The output is a labelled-frames folder (:mod:`neqforce.training.learn_frames`):
one ``neqforce.trajectory/2`` file per chunk of frames, readable by ``train`` and ``evaluate``, whose
``extra`` records each frame's source run and step; rerunning the same command labels only missing chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neqforce.physics import metallic_columns
from neqforce.trajectory import Trajectory, read_trajectory

from .learn_frames import Candidate, label_jobs


def eligible_frames(path: Path, min_metallic: int = 0, max_metallic: int | None = None,
                    per_run: int = 8, min_step: int = 0, traj: Trajectory | None = None) -> list[Candidate]:
    """The frames of trajectory ``path`` (at step ≥ ``min_step``) with a number of metallic columns in
    [min_metallic, max_metallic], thinned to ``per_run`` evenly spaced ones (first and last kept);
    ``traj``: the file already read."""
    traj = read_trajectory(path) if traj is None else traj
    fr = traj.frames()
    count = np.count_nonzero(metallic_columns(fr["q"], traj.q0_bulk), axis=-1)
    hi = traj.params.lx if max_metallic is None else max_metallic
    idx = np.flatnonzero((count >= min_metallic) & (count <= hi) & (fr["step"] >= min_step))
    if len(idx) > per_run:
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, per_run)).astype(int))]
    return [Candidate(path.stem if path.stem != "trajectory" else path.parent.name, traj.params, str(path),
                      int(fr["step"][i]), 0.0, np.array(fr["q"][i], dtype=np.float64)) for i in idx]


def label_trajectories(sources: Sequence[Path], out: Path, *, min_metallic: int = 0,
                       max_metallic: int | None = None, per_run: int = 8, min_step: int = 0, chunk: int = 4,
                       workers: int | None = None, scheduler: str | None = None,
                       echo: Callable[[str], None] = print) -> list[Path]:
    """Label the eligible frames (:func:`eligible_frames`) of every source trajectory into ``out``, one
    file per ``chunk`` frames named after the source (``{name}_c{j}.h5``); returns the files."""
    if per_run < 1 or chunk < 1:
        raise ValueError("--per-run and --chunk must be >= 1")
    if max_metallic is not None and max_metallic < min_metallic:
        raise ValueError(f"--max-metallic {max_metallic} is below --min-metallic {min_metallic}")
    jobs: list[tuple[Path, list[Candidate]]] = []
    names: dict[str, int] = {}
    dt = None
    for src in sources:
        src = Path(src)
        if not src.is_file():
            raise ValueError(f"not a trajectory file: {src}")
        traj = read_trajectory(src)
        frames = eligible_frames(src, min_metallic, max_metallic, per_run, min_step, traj=traj)
        if not frames:
            echo(f"  {src}: no frame with {min_metallic}..{max_metallic or 'lx'} metallic columns")
            continue
        dt = traj.dt if dt is None else dt
        name = frames[0].point
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        jobs += [(out / f"{name}_c{j // chunk}.h5", frames[j:j + chunk])
                 for j in range(0, len(frames), chunk)]
    if not jobs:
        raise ValueError("no frame to label (check --min-metallic/--max-metallic/--min-step)")
    label_jobs(jobs, dt or 0.1, {"kind_of_source": "labelled frames of existing trajectories",
                                 "selection": {"min_metallic": min_metallic, "max_metallic": max_metallic,
                                               "per_run": per_run, "min_step": min_step}},
               scheduler=scheduler, workers=workers, echo=echo)
    return [p for p, _ in jobs]
