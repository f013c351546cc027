"""NEGF Brownian-dynamics datasets: generation (parallel, resumable) and loading.

A dataset is a folder::

    dataset.json                 manifest: preset, base parameters, runs, versions (rewritten atomically)
    V3.000_s0.h5, V2.500_s0.h5…  one :mod:`neqforce.trajectory` file per (voltage, seed) run

Each run starts from the relaxed V = 0 CDW (:func:`cdw_ground_state`) and integrates SPEC §5 with
exact NEGF forces; frames (Q, n, F) are stored every ``save_every`` steps. Finished runs are never
recomputed; an interrupted run resumes bit-for-bit from its last checkpoint.

Runs are Dask tasks (one run per task: exact NEGF gains nothing from batching, and one task per run
spreads them over the workers) on an embedded LocalCluster of ``workers`` processes, or on an
existing cluster (``scheduler="tcp://HOST:8786"``, see docs/distributed.md). Each task writes its
run file itself, atomically (shared storage); the client writes the manifest. A task retried after
its worker died resumes the file from its last checkpoint, so nothing is duplicated or half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neqforce.atomic import atomic_write_text
from neqforce.physics import (
    DEFAULT_V,
    HolsteinParams,
    brownian_dynamics,
    bulk_cdw_amplitude,
    cdw_ground_state,
    domain_wall_position,
    negf_forces,
)
from neqforce.runlock import FolderLock
from neqforce.trajectory import Trajectory, TrajectoryWriter, read_trajectory, software_versions

MANIFEST = "dataset.json"
FORMAT = "neqforce.dataset/1"


@dataclass(frozen=True)
class RunSpec:
    """One NEGF-BD run of a dataset."""

    voltage: float
    seed: int
    n_steps: int

    @property
    def name(self) -> str:
        return f"V{self.voltage:.3f}_s{self.seed}"


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate: base parameters (voltage taken per run), runs, time step and frame stride."""

    params: HolsteinParams
    runs: tuple[RunSpec, ...]
    dt: float = 0.1
    save_every: int = 1
    checkpoint_every: int = 10
    preset: str = "custom"
    extra: dict = field(default_factory=dict)


#: Seed of each frozen blind test set (one NEGF-BD run per held-out voltage); a new set for every model
#: that read the previous one.
HELDOUT_SEEDS = {"heldout": 1000, "heldout2": 1001, "heldout3": 1002, "heldout4": 1003, "heldout5": 1004,
                "heldout6": 1005, "heldout7": 1010, "heldout8": 1020, "heldout9": 1030}


def preset_spec(name: str) -> DatasetSpec:
    """Named dataset recipes.

    * ``bundled``: the bundled model's data (docs/ml_model.md, docs/operating_point.md), 30×28
      defaults: DEFAULT_V seeds 0–5 (600 steps, past touchdown at the right electrode; 0–3 train,
      4–5 test) plus V = 2.5 and 2.0, seed 0 (400 steps, bracketing the threshold): 4 408 NEGF
      configurations, ~75 min on 2 idle cores.
    * ``heldout``: the frozen blind test set of the voltage-range model: 30×28, one seed (1000, never
      used for training, validation or model choice) at each V in {2.25, 2.75, 3.0, 3.5, 4.0},
      400 steps each (2 005 NEGF steps).
    * ``heldout2``: the second frozen blind test set, for models trained after ``heldout`` was read
      (voltage.onnx 0.3 read it): same voltages and length, seed 1001.
    * ``heldout3``: the third frozen blind test set, for models trained after ``heldout2`` was read
      (voltage.onnx 0.4 read it): same voltages and length, seed 1002.
    * ``heldout4``: the fourth, for models trained after ``heldout3`` was read (voltage.onnx 0.5 read
      it): same voltages and length, seed 1003.
    * ``heldout5``: the fifth, for models after ``heldout4`` was read (voltage.onnx 0.5.2 read it): same
      voltages and length, seed 1004.
    * ``heldout6``: the sixth, for models after ``heldout5`` was read (voltage.onnx 0.6 read it): same
      voltages and length, seed 1005.
    * ``heldout7``: the seventh, for models after ``heldout6`` was read (voltage.onnx 0.7 read it): same
      voltages and length, seed 1010 (1006–1009 are the NEGF-BD sweeps of 0.7's dynamics comparison).
    * ``heldout8``: the eighth, for models after ``heldout7`` was read (voltage.onnx 0.8 read it): same
      voltages and length, seed 1020 (1004–1019 are the ML-BD seeds of the dynamics validation).
    * ``heldout9``: the ninth, for models after ``heldout8`` was read (voltage.onnx 0.10 read it): same
      voltages and length, seed 1030.
    * ``vrange``: first training data of the voltage-range model: 30×28, seed 0 at each V in
      {2.0, 2.5, 3.0, 3.5, 4.0}, 400 steps each (2 005 NEGF steps; seeds ≥ 1000 are reserved for
      ``heldout``). Active learning (docs/ml_model.md) adds labelled frames where the committee disagrees.
    * ``vhigh``: more NEGF-BD data where the first voltage-range model missed its targets (V >= 3):
      30×28, seeds 1 and 2 at each V in {3.0, 3.5, 4.0}, 400 steps each (2 406 NEGF steps).
    * ``vhigh2``: one more seed (3) at each V in {3.0, 3.5, 4.0}, 400 steps each (1 203 NEGF steps),
      where voltage.onnx 0.4 missed its targets on ``heldout2`` (V = 3.5, 4.0).
    * ``tiny``: 8×6, two seeds, 20 steps (seconds; for tests).
    """
    if name == "bundled":
        runs = tuple(RunSpec(DEFAULT_V, s, 600) for s in range(6))
        runs += (RunSpec(2.5, 0, 400), RunSpec(2.0, 0, 400))
        return DatasetSpec(params=HolsteinParams(), runs=runs, preset=name)
    if name in HELDOUT_SEEDS:
        runs = tuple(RunSpec(v, HELDOUT_SEEDS[name], 400) for v in (2.25, 2.75, 3.0, 3.5, 4.0))
        return DatasetSpec(params=HolsteinParams(), runs=runs, preset=name)
    if name == "vrange":
        runs = tuple(RunSpec(v, 0, 400) for v in (2.0, 2.5, 3.0, 3.5, 4.0))
        return DatasetSpec(params=HolsteinParams(), runs=runs, preset=name)
    if name == "vhigh":
        runs = tuple(RunSpec(v, s, 400) for s in (1, 2) for v in (3.0, 3.5, 4.0))
        return DatasetSpec(params=HolsteinParams(), runs=runs, preset=name)
    if name == "vhigh2":
        runs = tuple(RunSpec(v, 3, 400) for v in (3.0, 3.5, 4.0))
        return DatasetSpec(params=HolsteinParams(), runs=runs, preset=name)
    if name == "tiny":
        runs = (RunSpec(DEFAULT_V, 0, 20), RunSpec(DEFAULT_V, 1, 20))
        return DatasetSpec(params=HolsteinParams(lx=8, ly=6), runs=runs, preset=name)
    raise ValueError(f"unknown dataset preset {name!r} (known: bundled, {', '.join(HELDOUT_SEEDS)}, vrange, "
                     "vhigh, vhigh2, tiny)")


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _run_status(path: Path) -> tuple[bool, int]:
    """(complete, last step) of a run file; (False, -1) when absent or unreadable."""
    if not path.exists():
        return False, -1
    try:
        traj = read_trajectory(path)
    except (ValueError, OSError, KeyError):
        return False, -1
    return traj.complete, traj.last_step


def run_negf_bd(path: Path, params: HolsteinParams, run: RunSpec, dt: float, save_every: int,
                checkpoint_every: int, progress: Callable[[int], None] | None = None,
                extra: dict | None = None) -> Path:
    """Run (or resume) one NEGF-BD trajectory into ``path``; ``progress(n)`` after n new steps."""
    p = params.replace(voltage=run.voltage)
    q0_bulk = bulk_cdw_amplitude(p)
    if path.exists():
        writer = TrajectoryWriter.resume(path)
        if writer.traj.complete:
            return path
        # restart at the last recorded state; it is recomputed but not recorded twice
        start, q = writer.traj.checkpoint_step, writer.traj.checkpoint_q
    else:
        traj = Trajectory(params=p, seed=run.seed, dt=dt, save_every=save_every, n_steps=run.n_steps,
                          backend="negf", model="exact-negf", q0_bulk=q0_bulk, extra=extra or {})
        writer = TrajectoryWriter(path, traj)
        start, q = 0, cdw_ground_state(p)
    last_recorded = writer.traj.checkpoint_step
    states = brownian_dynamics(q, lambda x: negf_forces(x, p), n_steps=run.n_steps - start, dt=dt,
                               temperature=p.temperature, seed=run.seed, start_step=start)
    for state in states:
        if state.step <= last_recorded:
            continue
        writer.record(state.step, state.q, state.force, state.density,
                      domain_wall_position(state.q, p, q0_bulk))
        if progress:
            progress(1)
        if state.step % checkpoint_every == 0:
            writer.checkpoint()
    writer.checkpoint(complete=True)
    return path


def _task(path: str, params: HolsteinParams, run: RunSpec, dt: float, save_every: int,
          checkpoint_every: int, extra: dict, topic: str | None) -> str:
    """One run as a Dask task: exact NEGF with one BLAS thread, progress to the client's channel."""
    from threadpoolctl import threadpool_limits

    from neqforce.client.sweep_cluster import report_progress

    done = _run_status(Path(path))[1] + 1
    last = time.monotonic()

    def progress(n: int) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= 0.5:
            last = time.monotonic()
            report_progress(topic, {"runs": {path: done}})

    with threadpool_limits(1):
        run_negf_bd(Path(path), params, run, dt, save_every, checkpoint_every, progress=progress, extra=extra)
    report_progress(topic, {"runs": {path: run.n_steps + 1}})
    return run.name


def generate_dataset(out_dir: str | os.PathLike[str], spec: DatasetSpec, workers: int = 2,
                     show_progress: bool = True, scheduler: str | None = None,
                     echo: Callable[[str], None] | None = None) -> Path:
    """Generate (or complete) the dataset ``spec`` in ``out_dir``; returns the folder.

    Runs are Dask tasks on an embedded LocalCluster of ``workers`` single-threaded processes (one
    BLAS thread each), or on the cluster at ``scheduler``. Runs already complete are skipped (no
    cluster is started when all are); interrupted ones resume from their checkpoint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "output folder"):  # one generation writes a folder at a time
        return _generate(out, spec, workers, show_progress, scheduler, echo)


def _generate(out: Path, spec: DatasetSpec, workers: int, show_progress: bool, scheduler: str | None,
              echo: Callable[[str], None] | None) -> Path:
    from tqdm import tqdm

    from neqforce.client.sweep_cluster import TaskChannel, dask_client

    manifest = {
        "format": FORMAT, "preset": spec.preset, "params": spec.params.to_dict(), "dt": spec.dt,
        "save_every": spec.save_every, "runs": [asdict(r) | {"file": f"{r.name}.h5"} for r in spec.runs],
        "versions": software_versions(), "extra": spec.extra,
    }
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("params") != manifest["params"] or old.get("dt") != spec.dt:
            raise ValueError(f"{out} holds a dataset with other parameters; use a new folder")
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    todo, done = [], {}
    for run in spec.runs:
        path = str(out / f"{run.name}.h5")
        complete, last = _run_status(Path(path))
        done[path] = run.n_steps + 1 if complete else last + 1
        if not complete:
            todo.append(run)
    total = sum(r.n_steps + 1 for r in spec.runs)
    if not todo:
        return out
    say = echo or (lambda text: None)
    with dask_client(scheduler, n_workers=max(1, min(workers, len(todo))), echo=say) as client:
        for tmp in out.glob("*.h5.*.tmp"):  # left by a writer killed mid-write; no task runs yet
            tmp.unlink(missing_ok=True)
        channel = TaskChannel(client, out / ".stop", prefix="neqforce-dataset")
        tag = uuid.uuid4().hex[:8]
        futures = [client.submit(_task, str(out / f"{r.name}.h5"), spec.params, r, spec.dt,
                                 spec.save_every, spec.checkpoint_every, spec.extra, channel.topic,
                                 key=f"neqforce-dataset-{tag}-{r.name}", pure=False) for r in todo]
        bar = tqdm(total=total, initial=sum(done.values()), unit="step", desc="NEGF-BD",
                   disable=not show_progress, smoothing=0.05)
        try:
            pending = set(futures)
            while pending:
                finished = {f for f in pending if f.done()}
                pending -= finished
                for fut in finished:
                    fut.result()  # a failed run raises its own exception here
                for msg in channel.drain():
                    for path, n in msg.get("runs", {}).items():
                        done[path] = max(done.get(path, 0), int(n))
                bar.n = min(total, sum(done.values()))
                bar.refresh()
                if pending and not finished:
                    time.sleep(0.2)
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            channel.close()
            bar.close()
    return out


def dataset_files(path: str | os.PathLike[str]) -> list[Path]:
    """Trajectory files of a dataset folder (or a single .h5 file), sorted by name."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ValueError(f"dataset not found: {p}")
    files = sorted(f for f in p.glob("*.h5"))
    if not files:
        raise ValueError(f"no trajectory files (*.h5) in {p}")
    return files


def load_dataset(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 complete_only: bool = False) -> list[Trajectory]:
    """Read every trajectory of one or more dataset folders/files."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    trajs = []
    for p in paths:
        for f in dataset_files(p):
            t = read_trajectory(f)
            if t.complete or not complete_only:
                t.extra = {**t.extra, "file": str(f)}
                trajs.append(t)
    return trajs


def dataset_sha256(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> str:
    """SHA-256 over the (Q, F) frames of all trajectories, in file-name order (content, not bytes)."""
    h = hashlib.sha256()
    for t in load_dataset(paths):
        fr = t.frames()
        h.update(t.params.to_json().encode())
        h.update(np.ascontiguousarray(fr["q"]).tobytes())
        h.update(np.ascontiguousarray(fr["force"]).tobytes())
    return h.hexdigest()
