"""One task of ``neqforce sweep``: a chunk of runs that share parameters, advanced together.

The R replicas of a chunk (same parameters, different seeds) make one force call per step on a
batch ``q[R, lx, ly]`` and follow SPEC §5 exactly as :func:`neqforce.physics.brownian_dynamics`
does for one run (same float operations in the same order, noise of step s from
``SeedSequence([seed, s])``), so each replica is bit-for-bit the ``neqforce simulate`` run with its
seed when the backend gives the same forces for a lattice alone and inside a batch (the bundled
ONNX model does: its export checked that ONNX Runtime gives every lattice of a batch the floats it gets
alone, metadata ``neqforce.batch_invariant``; a model without that check is evaluated one lattice per
call; tested in ``tests/sweep``).

Each run is a :mod:`neqforce.trajectory` file, created with :meth:`Simulation.create` and
checkpointed atomically (temporary file + rename) by the task itself. A task that is run again —
resumed sweep, or retried by Dask after its worker died — reopens each file at its last checkpoint
and continues bit-for-bit, so a run is never duplicated or half-written.

Forces come from (``ForceSpec.kind``):

* ``onnx``: an ONNX Runtime session in the worker process (loaded once per process and model; the
  server's own :class:`~neqforce.server.backends.onnx.OnnxModel`, so the numbers are the server's);
* ``negf``: exact NEGF in the worker process (the server's ``negf_batch``), one BLAS thread;
* ``server``: a running force server (``--server``), one streamed request per step for the batch.

Each replica's trajectory records, per step, the largest committee spread of its force and every change
of backend/model/flag (:mod:`neqforce.client.answers`): in-worker ONNX applies the server's own flag rules
per lattice (``flag_configuration`` and ``spread_check`` of :mod:`neqforce.server.routing`: under AUTO a
lattice whose spread is above the threshold is recomputed with exact NEGF in the worker, as the server does;
explicit ONNX flags it); through ``--server`` the answer (its spread and flag) is that of the whole batch's
request.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.physics import HolsteinParams, step_noise
from neqforce.physics.domain_wall import domain_wall_positions

from .answers import note_answer

#: A batched force field: q (R, lx, ly) -> (F (R, lx, ly), n (R, lx, ly) or None), float64.
BatchForceFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class ForceSpec:
    """Where a task gets its forces (see the module docstring); ``threads``: ONNX Runtime intra-op /
    BLAS threads inside the task (1 per Dask worker thread by default)."""

    kind: str
    model: str | None = None
    server: str | None = None
    backend: str = "auto"
    token: str | None = None
    tls_ca: str | None = None
    timeout: float = 300.0
    threads: int = 1


@dataclass(frozen=True)
class ChunkSpec:
    """A chunk of runs sharing ``params``: one run per seed, trajectory files at ``paths``."""

    key: str
    point: str
    params: HolsteinParams
    seeds: tuple[int, ...]
    paths: tuple[str, ...]
    n_steps: int
    forces: ForceSpec
    dt: float = 0.1
    save_every: int = 10
    checkpoint_every: int = 50
    checkpoint_seconds: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)
    progress: str | None = None  # event topic of progress reports (sweep_cluster.TaskChannel)
    stop: str | None = None  # stop file: checkpoint and return once it exists


@dataclass
class RunResult:
    """State of one run when its task returned."""

    path: str
    seed: int
    last_step: int
    complete: bool
    backend: str
    model: str
    final_xi: float


@dataclass
class ChunkResult:
    key: str
    runs: list[RunResult]
    wall_s: float
    new_steps: int
    stopped: bool = False


# ----------------------------------------------------------------------------------------- forces
#: Sites per ONNX Runtime call for a batch-invariant model (metadata ``neqforce.batch_invariant``: the
#: export checked that every lattice of a batch gets the floats it gets alone): a batch is evaluated in
#: pieces of at most this many sites (at least one lattice each). Measured per site with the bundled
#: committee, one intra-op thread, 16 lattices in pieces of 1/2/4/8/16: pieces of ~2 000–3 500 sites are
#: fastest — smaller ones pay ONNX Runtime's per-node overhead (~300 nodes after its graph optimizations,
#: most of them small), larger ones leave the cache (the gather graph of package < 0.5.3 copied the
#: (2 r_c + 1)² square of neighbour values, ~1 kB of float32 per site at r_c = 8). At 30×28 that is 4
#: lattices per call, ~15 % faster per lattice than one; at 80×28 and 120×28 one; at 12×10, 30. Re-measured
#: with the convolution graph of 0.5.3 (1/2/4/8/16 per call: 1.15/1.05/1.00/1.02/1.02 ms per lattice): the
#: same choice. A model not checked for batch
#: invariance (exported before the check existed) is evaluated one lattice per call, as ``simulate``'s
#: server evaluates it, so that replicas stay bit-for-bit their ``simulate`` runs.
SITES_PER_CALL = 3600

_models_lock = threading.Lock()
#: One in-worker NEGF fallback at a time per process (it sets the process-wide BLAS thread count).
_negf_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _onnx_model_cached(path: str, threads: int) -> Any:
    from neqforce.server.backends.onnx import OnnxModel, unique_names

    return OnnxModel.load(path, unique_names([path])[0], threads=threads)


def onnx_model(path: str, threads: int = 1) -> Any:
    """The server's OnnxModel for ``path`` with ``threads`` intra-op threads, loaded once per process
    (shared by the tasks of a worker and by the sweep's own planning in the embedded cluster)."""
    with _models_lock:
        return _onnx_model_cached(str(path), int(threads))


class OnnxBatchForces:
    """In-process ONNX Runtime forces: float64 q is cast to float32 and the float32 outputs back to
    float64, exactly as the server and the client do on the wire. ``answers``: per lattice of the last
    call, what answered (spread, flag and reason by the server's rules)."""

    backend = "onnx"

    def __init__(self, path: str, threads: int = 1, params: HolsteinParams | None = None,
                 requested: str = "auto", sites_per_call: int | None = None) -> None:
        from neqforce.server.backends.onnx import BATCH_INVARIANT_KEY

        self._model = onnx_model(str(path), int(threads))
        if sites_per_call is None:  # several lattices per call only where that cannot change a float
            invariant = self._model.metadata.get(BATCH_INVARIANT_KEY) == "true"
            sites_per_call = SITES_PER_CALL if invariant else 1
        self.model = self._model.name
        self._params = params
        self._physical = params.physical() if params is not None else None  # feeds a model's voltage input
        self._route = _onnx_route(self._model, params, requested)
        self._requested = requested
        self._sites_per_call = int(sites_per_call)
        self.answers: list[Any] = []

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(q)
        step = max(1, self._sites_per_call // max(1, q[0].size)) if n else 1
        force, density = np.empty(q.shape), np.empty(q.shape)
        spreads = np.full(n, -1.0)
        for i in range(0, n, step):
            f, d, std = self._model.evaluate(q[i:i + step], want_density=True, params=self._physical)
            force[i:i + step], density[i:i + step] = f, d  # float32 -> float64, as on the wire
            if std is not None:
                spreads[i:i + step] = np.asarray(std, dtype=np.float64).reshape(len(f), -1).max(axis=1)
        self.answers = self._answers(q, spreads)
        redo = [i for i, a in enumerate(self.answers) if a.backend == "negf"]
        if redo:  # AUTO, spread above the threshold: exact NEGF for those lattices, as the server does
            from threadpoolctl import threadpool_limits

            from neqforce.server.backends.negf import blas_threads, negf_batch

            # the embedded server's BLAS thread count (one NEGF worker), so that these steps are bit for bit
            # those of `simulate`; one solve at a time per process: the count is process-wide
            with _negf_lock, threadpool_limits(blas_threads(1)):
                f, d = negf_batch(np.asarray(q[redo], dtype=np.float64), self._params)
            force[redo], density[redo] = f, d
        return force, density

    def _answers(self, q: np.ndarray, spreads: np.ndarray) -> list[Any]:
        """Per lattice: the route flagged as the server flags it (OUTSIDE_DOMAIN from
        ``flag_configuration``, asked once for the batch and per lattice only when the batch is flagged;
        HIGH_SPREAD from ``spread_check``) and its committee spread (-1: no committee). Under AUTO a spread
        above the model's threshold routes the lattice to exact NEGF (backend "negf", spread 0), the
        server's policy (docs/physics.md); an explicit ONNX task flags it instead."""
        from neqforce.server.backends.negf import NEGF_MODEL
        from neqforce.server.routing import flag_configuration, spread_check
        from neqforce.v1 import force_service_pb2 as pb

        from .answers import Answer

        route, params = self._route, self._params
        if route is None or params is None:
            return [Answer("onnx", self.model, False, "", float(s)) for s in spreads]
        auto = self._requested == "auto"
        whole = flag_configuration(route, q, params)  # unflagged: no lattice of the batch is flagged
        out = []
        for i, s in enumerate(spreads):
            chosen = flag_configuration(route, q[i:i + 1], params) if whole is not route else route
            chosen = spread_check(chosen, pb.BACKEND_AUTO if auto else pb.BACKEND_ONNX, float(s),
                                  None if auto else "in-worker ONNX of a sweep task")
            if chosen.backend == pb.BACKEND_NEGF:
                out.append(Answer("negf", NEGF_MODEL, False, chosen.reason, 0.0))
            else:
                out.append(Answer("onnx", self.model, bool(chosen.flagged), chosen.reason, float(s)))
        return out


def _onnx_route(model: Any, params: HolsteinParams | None, requested: str) -> Any:
    """The server's route of ``params`` to ``model`` (reason, OUTSIDE_DOMAIN flag); None when it has none."""
    if params is None:
        return None
    from neqforce.server.errors import RequestError
    from neqforce.server.routing import route
    from neqforce.v1 import force_service_pb2 as pb

    code = {"auto": pb.BACKEND_AUTO, "onnx": pb.BACKEND_ONNX}.get(requested, pb.BACKEND_ONNX)
    try:
        chosen = route(params, code, "", {model.name: model}, rtol=1e-6, negf_max_sites=1 << 62)
    except RequestError:
        return None
    if chosen.model is None:  # AUTO would not use the model; the task runs it as asked (explicit ONNX)
        chosen = route(params, pb.BACKEND_ONNX, "", {model.name: model}, rtol=1e-6, negf_max_sites=1 << 62)
    return chosen


class NegfBatchForces:
    """In-process exact NEGF for each lattice of the batch (what the server's NEGF backend runs)."""

    backend = "negf"

    def __init__(self, params: HolsteinParams) -> None:
        from neqforce.server.backends.negf import NEGF_MODEL

        self.params = params
        self.model = NEGF_MODEL

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from neqforce.server.backends.negf import negf_batch

        from .answers import Answer

        self.answers = [Answer("negf", self.model, False, "exact NEGF in the worker", 0.0)] * len(q)
        return negf_batch(q, self.params)


class ServerBatchForces:
    """A force server: one streamed request per step carrying the whole batch."""

    def __init__(self, spec: ForceSpec, params: HolsteinParams) -> None:
        from neqforce.client import ForceClient

        self._client = ForceClient(str(spec.server), token=spec.token, tls_ca=spec.tls_ca,
                                   timeout=spec.timeout)
        self._stream = self._client.stream(params, backend=spec.backend, want_density=True)
        self.backend, self.model = "", ""

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from .answers import answer_of

        r = self._stream.compute(q)
        self.backend, self.model = str(r.backend), str(r.model)
        self.answers = [answer_of(r)] * len(q)
        return np.asarray(r.force, dtype=np.float64), r.density

    def close(self) -> None:
        self._stream.close()
        self._client.close()


def make_forces(spec: ForceSpec, params: HolsteinParams) -> Any:
    """The batched force source of ``spec`` for ``params``."""
    if spec.kind == "onnx":
        return OnnxBatchForces(str(spec.model), spec.threads, params, requested=spec.backend)
    if spec.kind == "negf":
        return NegfBatchForces(params)
    if spec.kind == "server":
        return ServerBatchForces(spec, params)
    raise ValueError(f"unknown force source {spec.kind!r}")


# ----------------------------------------------------------------------------------------- dynamics
class _Replica:
    """One run inside a batch: its Simulation, the state to evaluate next and its step."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        traj = sim.trajectory
        self.last_recorded = traj.checkpoint_step
        self.step = max(self.last_recorded, 0)  # the checkpoint state is recomputed, not recorded twice
        self.q = np.array(traj.checkpoint_q, dtype=np.float64, copy=True)
        self.end = traj.n_steps
        self.amplitude = np.sqrt(2.0 * traj.params.temperature * traj.dt)
        self.since_checkpoint = 0
        self.segment: dict[str, Any] = {}
        self.t0 = time.monotonic()

    @property
    def done(self) -> bool:
        return self.sim.last_step >= self.end


def _open_or_create(path: Path, params: HolsteinParams, seed: int, spec: ChunkSpec,
                    q0: Callable[[], np.ndarray]) -> Any:
    """Reopen the run at its checkpoint, or create it. A file too damaged to read (a writer killed in
    the middle of a checkpoint) is kept aside as ``trajectory.h5.damaged-<time>`` and the run starts
    over: it is deterministic, so the result is the same run."""
    from neqforce.trajectory import TrajectoryError

    from .simulate import Simulation

    extra = {"init": "cdw", **spec.extra}
    if path.exists():
        try:
            sim = Simulation.open(path)
        except TrajectoryError as exc:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(aside)
            extra["restarted"] = f"previous file unreadable ({exc}); kept as {aside.name}"
        else:
            traj = sim.trajectory
            if traj.params != params or traj.seed != seed or traj.dt != spec.dt:
                raise ValueError(f"{path} holds another run (parameters, seed or dt differ); remove it or "
                                 f"use another --out")
            return sim
    return Simulation.create(path, params, q0(), n_steps=spec.n_steps, dt=spec.dt, seed=seed,
                             save_every=spec.save_every, extra=extra)


@dataclass
class Cadence:
    """When the replicas of a task checkpoint, as :meth:`Simulation.run` does for one run: at steps
    that are multiples of ``every`` unless writing took over 10 % of the time since the previous
    checkpoint, and at least every ``seconds`` of wall time (where checkpoints fall never changes a run)."""

    every: int
    seconds: float
    last: float = field(default_factory=time.monotonic)
    cost: float = 0.0

    def due(self, step: int) -> bool:
        since = time.monotonic() - self.last
        return (step % self.every == 0 and since >= 9 * self.cost) or since >= self.seconds

    def written(self, t0: float) -> None:
        """A checkpoint begun at ``t0`` (time.monotonic) just ended."""
        self.last = time.monotonic()
        self.cost = self.last - t0


def advance_batch(replicas: Sequence[_Replica], force_fn: BatchForceFn, *,
                  on_step: Callable[[], None] | None = None,
                  cadence: Cadence | None = None,
                  should_stop: Callable[[], bool] | None = None) -> int:
    """Advance every replica to its end, one batched force call per step for the replicas at the
    lowest step (all of them, once any resumed from different checkpoints have caught up).

    Q(s + 1) = Q(s) + dt F(Q(s)) + sqrt(2 T dt) ξ(seed, s), with the same float operations as
    :func:`neqforce.physics.brownian_dynamics`, done on the whole batch at once (element-wise, so every
    replica gets the floats it would get alone); ξ(seed, s) is drawn per replica. A replica checkpoints
    when it ends and when ``cadence`` says so. Returns the number of replica-steps recorded.
    """
    recorded = 0
    active = [r for r in replicas if not r.done]
    while active:
        if should_stop is not None and should_stop():
            break
        low = min(r.step for r in active)
        group = [r for r in active if r.step == low]
        q = np.stack([r.q for r in group])
        force, density = force_fn(q)
        force = np.asarray(force, dtype=np.float64)
        finite = np.isfinite(force).all(axis=(-2, -1))
        if not finite.all():
            bad = group[int(np.argmin(finite))]
            raise FloatingPointError(f"non-finite force at step {bad.step} of {bad.sim.path}")
        answers = list(getattr(force_fn, "answers", None) or [])
        recorded += _record(group, q, force, density, answers if len(answers) == len(group) else None)
        _euler_maruyama(group, q, force)
        if cadence is not None and cadence.due(low):
            t0 = time.monotonic()
            for r in group:
                if not r.done and r.since_checkpoint:
                    _checkpoint(r, force_fn)
            cadence.written(t0)
        for r in group:
            if r.done:
                _checkpoint(r, force_fn)
        if on_step is not None:
            on_step()
        active = [r for r in active if not r.done]
    return recorded


def _record(group: Sequence[_Replica], q: np.ndarray, force: np.ndarray, density: np.ndarray | None,
            answers: Sequence[Any] | None) -> int:
    """Record the state of every replica of ``group`` not recorded yet (a resumed replica's checkpoint
    state is recomputed, not recorded twice); ξ of all of them in one call."""
    todo = [i for i, r in enumerate(group) if r.step > r.last_recorded]
    if not todo:
        return 0
    traj0 = group[todo[0]].sim.trajectory
    q0_bulk = np.array([group[i].sim.trajectory.q0_bulk for i in todo])
    xi = domain_wall_positions(q[todo], traj0.params, q0_bulk)
    for k, i in enumerate(todo):
        r = group[i]
        spread = note_answer(r.sim.trajectory.extra, r.step, None if answers is None else answers[i])
        r.sim.writer.record(r.step, q[i], force[i], None if density is None else density[i], float(xi[k]),
                            force_std_max=spread)
        r.since_checkpoint += 1
    return len(todo)


def _euler_maruyama(group: Sequence[_Replica], q: np.ndarray, force: np.ndarray) -> None:
    """One step for the replicas of ``group`` (all at the same step) that have not reached their end:
    q + dt·F, then + sqrt(2 T dt)·ξ(seed, step) where the amplitude is positive — per element exactly
    what :func:`neqforce.physics.brownian_dynamics` computes for one run."""
    move = [i for i, r in enumerate(group) if r.step < r.end]
    if not move:
        return
    if len(move) < len(group):
        q, force = q[move], force[move]
    dt = np.array([group[i].sim.trajectory.dt for i in move])[:, None, None]
    amplitude = np.array([group[i].amplitude for i in move])
    nxt = q + dt * force
    noisy = np.flatnonzero(amplitude > 0)
    if noisy.size:
        xi = np.empty((noisy.size, *q.shape[1:]))
        for k, j in enumerate(noisy):
            r = group[move[j]]
            xi[k] = step_noise(r.sim.trajectory.seed, r.step, q.shape[1:])
        if noisy.size == len(move):
            nxt += amplitude[:, None, None] * xi
        else:
            nxt[noisy] += amplitude[noisy][:, None, None] * xi
    for k, i in enumerate(move):
        group[i].q = nxt[k]
        group[i].step += 1


def _checkpoint(r: _Replica, force_fn: Any) -> None:
    """Write the run's file (atomic), with this task's segment of provenance updated."""
    from .simulate import _merge

    traj = r.sim.trajectory
    r.segment["end_step"] = r.sim.last_step
    r.segment["wall_s"] = round(time.monotonic() - r.t0, 3)
    for name in ("backend", "model"):
        value = str(getattr(force_fn, name, "") or "")
        r.segment[name] = value
        setattr(traj, name, _merge(getattr(traj, name), value))
    r.since_checkpoint = 0
    r.sim.writer.checkpoint(complete=r.done)


def run_chunk(spec: ChunkSpec) -> ChunkResult:
    """Run (or resume) every run of ``spec``; returns their state. Safe to run again at any time."""
    from threadpoolctl import threadpool_limits

    from .simulate import initial_cdw

    wall0 = time.monotonic()
    reporter = _Reporter(spec)
    # NEGF tasks (one per worker process) pin BLAS to their thread budget. ONNX tasks share a process and
    # leave the process-wide BLAS setting alone: only their NEGF fallback sets it, under _negf_lock
    # (ONNX Runtime has its own intra-op threads).
    blas = threadpool_limits(spec.forces.threads) if spec.forces.kind != "onnx" else contextlib.nullcontext()
    with blas:
        cache: dict[str, np.ndarray] = {}

        def q0() -> np.ndarray:
            if "q" not in cache:
                cache["q"] = initial_cdw(spec.params)[0]
            return cache["q"]

        replicas = [_Replica(_open_or_create(Path(p), spec.params, s, spec, q0))
                    for s, p in zip(spec.seeds, spec.paths, strict=True)]
        todo = [r for r in replicas if not r.done]
        force_fn = make_forces(spec.forces, spec.params) if todo else None
        for r in todo:
            r.t0 = time.monotonic()
            r.segment = {"start_step": r.last_recorded + 1, "end_step": r.last_recorded, "started": _now(),
                         "wall_s": 0.0, "sweep_task": spec.key, "replicas_in_batch": len(todo),
                         "force_source": spec.forces.kind,
                         **({"server": spec.forces.server} if spec.forces.server else {})}
            r.sim.trajectory.extra.setdefault("segments", []).append(r.segment)
        new = 0
        try:
            if todo:
                new = advance_batch(todo, force_fn, on_step=lambda: reporter.report(replicas),
                                    cadence=Cadence(spec.checkpoint_every, spec.checkpoint_seconds),
                                    should_stop=reporter.stop_requested)
        finally:
            for r in todo:  # everything done so far is saved, whatever ended the loop
                if not r.done and r.since_checkpoint:
                    _checkpoint(r, force_fn)
            if hasattr(force_fn, "close"):
                force_fn.close()
        reporter.report(replicas, force=True)
    runs = [RunResult(path=str(r.sim.path), seed=r.sim.trajectory.seed, last_step=r.sim.last_step,
                      complete=r.done, backend=r.sim.trajectory.backend, model=r.sim.trajectory.model,
                      final_xi=r.sim.trajectory.series_xi[-1] if r.sim.trajectory.series_xi else float("nan"))
            for r in replicas]
    return ChunkResult(key=spec.key, runs=runs, wall_s=time.monotonic() - wall0, new_steps=new,
                       stopped=not all(r.done for r in replicas))


def _now() -> str:
    from .simulate import _now as now

    return now()


class _Reporter:
    """Progress to the sweep's client ({path: last step}, at most once a second) and the stop request,
    through :mod:`neqforce.client.sweep_cluster` (both no-ops outside a Dask worker)."""

    def __init__(self, spec: ChunkSpec) -> None:
        self._topic, self._stop_file = spec.progress, spec.stop
        self._last = self._checked = 0.0
        self._stop = False

    def report(self, replicas: Sequence[_Replica], force: bool = False) -> None:
        from .sweep_cluster import report_progress

        now = time.monotonic()
        if not self._topic or (not force and now - self._last < 1.0):
            return
        self._last = now
        report_progress(self._topic, {"runs": {str(r.sim.path): r.sim.last_step for r in replicas}})

    def stop_requested(self) -> bool:
        from .sweep_cluster import stop_requested

        now = time.monotonic()
        if now - self._checked >= 0.5:
            self._checked = now
            self._stop = stop_requested(self._stop_file)
        return self._stop
