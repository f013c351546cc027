"""Active learning, the frames: committee spread of explored frames, selection, exact NEGF labels, and the
labelled-frames dataset (:mod:`neqforce.training.learn` runs the loop).

The labelled dataset is a folder of :mod:`neqforce.trajectory` files, so ``neqforce train`` (and
:func:`neqforce.training.dataset.load_dataset`) read it beside NEGF-BD trajectories unchanged::

    labelled/labelled.json                       manifest: files, iteration, point, selecting model, versions
    labelled/it000_lx=10_voltage=2.5_c0.h5       one file per labelling task (a chunk of frames of one point)

Each file holds one point's frames in the order they were selected (``frames/step`` = 0, 1, …; save_every
1, complete): Q, the exact NEGF force F(Q) and density n(Q) at the point's parameters; its ``extra``
records the iteration, the selecting model (name, sha256), the threshold, and per frame the explored run,
its BD step and the committee spread (force units). Files are written whole and atomically by the client
from the task results, so an interrupted labelling leaves only complete files, and a rerun labels only the
chunks that have none.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.atomic import atomic_write_text
from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, domain_wall_position
from neqforce.trajectory import Trajectory, read_trajectory, software_versions, write_trajectory

LABELLED_MANIFEST = "labelled.json"
LABELLED_FORMAT = "neqforce.labelled/1"


@dataclass
class Candidate:
    """An explored frame: where it comes from and the committee's largest per-site spread on it."""

    point: str
    params: HolsteinParams
    run: str  # trajectory file of the exploration (relative to the learn folder)
    step: int
    spread: float  # max_i σ_i (force units)
    q: np.ndarray  # (lx, ly) float64

    @property
    def digest(self) -> str:
        return frame_digest(self.q)


def frame_digest(q: np.ndarray) -> str:
    """Content hash of a configuration (float64 bytes): the same frame is never labelled twice."""
    return hashlib.sha1(np.ascontiguousarray(q, dtype=np.float64).tobytes()).hexdigest()


def frame_spreads(model: Any, q: np.ndarray, params: HolsteinParams, chunk: int = 64) -> np.ndarray:
    """Largest per-site committee spread max_i σ_i of each frame q (S, lx, ly) at ``params`` (its voltage
    fed to the graph); ``model``: a committee :class:`~neqforce.server.backends.onnx.OnnxModel`."""
    if not model.committee:
        raise ValueError(f"{model.path} has no force_std output: active learning needs a committee "
                         "(export two or more checkpoints together)")
    out = np.empty(len(q))
    for i in range(0, len(q), chunk):
        _, _, std = model.evaluate(q[i:i + chunk], want_density=False, params=params.physical())
        out[i:i + chunk] = np.asarray(std, dtype=np.float64).reshape(len(std), -1).max(axis=1)
    return out


def select_frames(cands: list[Candidate], threshold: float, max_per_point: int, top_k: int = 0,
                  exclude: set[str] | frozenset[str] = frozenset(), max_spread: float | None = None,
                  pick: str = "largest") -> list[Candidate]:
    """Frames to label: per point, those whose spread exceeds ``threshold`` (or, with ``top_k`` > 0, the
    ``top_k`` largest spreads whatever the threshold) and is at most ``max_spread`` (DP-GEN's upper trust
    bound: a frame the committee disagrees on by more is a run that left physical configurations, e.g.
    blew up after an extrapolation, not one worth an NEGF label), at most ``max_per_point``; frames
    already labelled (``exclude``: digests) or repeated (the same initial state in every seed) once.
    ``pick``: "largest" spreads first, or "spaced": evenly spread over the eligible frames in exploration
    order (runs, then steps), so that one point's labels cover its whole trajectory (short and long
    metallic domains), not only the frames next to the largest spread."""
    if pick not in ("largest", "spaced"):
        raise ValueError(f"pick must be 'largest' or 'spaced', got {pick!r}")
    chosen: list[Candidate] = []
    seen = set(exclude)
    for point in dict.fromkeys(c.point for c in cands):
        mine = [c for c in cands if c.point == point and (max_spread is None or c.spread <= max_spread)]
        by_spread = sorted(mine, key=lambda c: -c.spread)
        if top_k:
            mine = by_spread[:top_k]
        else:
            mine = [c for c in (by_spread if pick == "largest" else mine) if c.spread > threshold]
        fresh = []
        for c in mine:
            if c.digest not in seen:
                seen.add(c.digest)
                fresh.append(c)
        cap = min(max_per_point, top_k) if top_k else max_per_point
        if pick == "spaced" and len(fresh) > cap:
            fresh = [fresh[i] for i in np.unique(np.round(np.linspace(0, len(fresh) - 1, cap)).astype(int))]
        chosen += fresh[:cap]
    return chosen


def label_task(q: np.ndarray, params: HolsteinParams) -> dict[str, Any]:
    """Exact NEGF labels of frames q (S, lx, ly) at ``params`` as a Dask task (one BLAS thread): force and
    density (S, lx, ly) float64, and the CPU seconds the task used (its NEGF cost)."""
    from threadpoolctl import threadpool_limits

    from neqforce.server.backends.negf import negf_batch

    cpu0, wall0 = time.process_time(), time.monotonic()
    with threadpool_limits(1):
        force, density = negf_batch(np.asarray(q, dtype=np.float64), params)
    return {"force": force, "density": density, "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0}


def write_labelled(path: Path, frames: list[Candidate], force: np.ndarray, density: np.ndarray, dt: float,
                   provenance: dict[str, Any]) -> Path:
    """One labelled-frames file (module docstring), written whole and atomically."""
    params = frames[0].params
    q0 = bulk_cdw_amplitude(params)
    n = len(frames)
    traj = Trajectory(params=params, seed=0, dt=dt, save_every=1, n_steps=n - 1, backend="negf",
                      model="exact-negf", q0_bulk=q0, complete=True,
                      extra={"kind": LABELLED_FORMAT, **provenance,
                             "frames": [{"run": c.run, "step": c.step, "spread": round(c.spread, 7)}
                                        for c in frames]})
    for i, c in enumerate(frames):
        traj.series_step.append(i)
        traj.series_xi.append(domain_wall_position(c.q, params, q0))
        traj.frame_step.append(i)
        traj.frame_q.append(np.array(c.q, dtype=np.float64))
        traj.frame_force.append(np.array(force[i], dtype=np.float64))
        traj.frame_density.append(np.array(density[i], dtype=np.float64))
    traj.checkpoint_step, traj.checkpoint_q = n - 1, np.array(frames[-1].q, dtype=np.float64)
    write_trajectory(path, traj)
    return path


def check_labelled(path: Path, frames: list[Candidate]) -> None:
    """A rerun skips the files that exist: refuse one that holds other configurations than the job planned
    for it (e.g. the same sources given in another order, or other selection options), which would
    otherwise leave some frames labelled twice and others never."""
    have = [frame_digest(q) for q in read_trajectory(path).frames()["q"]]
    want = [c.digest for c in frames]
    if have != want:
        first = frames[0]
        raise ValueError(f"{path} already holds other frames than this command plans for it ({first.run}, "
                         f"step {first.step}, ...): same sources in the same order and the same options "
                         "as the first run, or a new --out folder")


def labelled_digests(folder: Path) -> set[str]:
    """Digests of every frame of the labelled dataset (what is never labelled again)."""
    out: set[str] = set()
    for f in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        for q in read_trajectory(f).frames()["q"]:
            out.add(frame_digest(q))
    return out


def write_labelled_manifest(folder: Path) -> Path:
    """``labelled.json``: every labelled file with its iteration, point, selecting model, frame count and
    NEGF CPU seconds, and the software versions (rewritten atomically from the files themselves)."""
    files = []
    for f in sorted(folder.glob("*.h5")):
        t = read_trajectory(f)
        files.append({"file": f.name, "frames": len(t.frame_step), "params": t.params.to_dict(),
                      **{k: t.extra.get(k) for k in ("iteration", "point", "selected_by", "threshold",
                                                       "negf_cpu_s")}})
    manifest = {"format": LABELLED_FORMAT, "files": files, "frames": sum(f["frames"] for f in files),
                "versions": software_versions()}
    return atomic_write_text(folder / LABELLED_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def label_jobs(jobs: list[tuple[Path, list[Candidate]]], dt: float, provenance: dict[str, Any], *,
               scheduler: str | None = None, workers: int | None = None,
               echo: Callable[[str], None] = print) -> float:
    """Label every (file, frames) job whose file does not exist yet with exact NEGF, one Dask task per job
    (one BLAS thread each; an embedded LocalCluster of ``workers`` processes, or ``scheduler``); each file
    is written whole and atomically by the client as its task returns (:func:`write_labelled`, with
    ``provenance`` plus the job's point and NEGF seconds), so an interruption keeps every finished job.
    The folder's manifest is rewritten at the end. Returns the NEGF CPU seconds of all the jobs' files."""
    from neqforce.client.sweep_cluster import dask_client

    folders = {path.parent for path, _ in jobs}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for path, frames in jobs:
        if path.exists():
            check_labelled(path, frames)
    todo = [(path, frames) for path, frames in jobs if not path.exists()]
    if todo:
        n = sum(len(f) for _, f in todo)
        echo(f"  labelling {n} frame(s) with exact NEGF in {len(todo)} task(s)")
        with dask_client(scheduler, n_workers=workers, echo=echo, processes=True) as client:
            tag = uuid.uuid4().hex[:8]
            futures = {client.submit(label_task, np.stack([c.q for c in frames]), frames[0].params,
                                     key=f"neqforce-label-{tag}-{i}", pure=False): (path, frames)
                       for i, (path, frames) in enumerate(todo)}
            pending = set(futures)
            done = 0
            try:
                while pending:
                    finished = {f for f in pending if f.done()}
                    pending -= finished
                    for fut in finished:  # written as each task returns: an interruption keeps them
                        path, frames = futures[fut]
                        res = fut.result()
                        write_labelled(path, frames, res["force"], res["density"], dt, {
                            **provenance, "point": frames[0].point,
                            "negf_cpu_s": round(res["cpu_s"], 4), "negf_wall_s": round(res["wall_s"], 4)})
                        done += len(frames)
                        echo(f"  labelled {done}/{n} frame(s): {path.name} ({res['cpu_s']:.1f} CPU s)")
                    if pending and not finished:
                        time.sleep(0.1)
            finally:
                for fut in futures:
                    if not fut.done():
                        fut.cancel()
    for folder in folders:
        write_labelled_manifest(folder)
    return sum(float(read_trajectory(p).extra.get("negf_cpu_s", 0.0)) for p, _ in jobs)
