"""Brownian-dynamics quench simulations driven by any force source (library behind ``neqforce simulate``).

The dynamics is overdamped Langevin with gamma = 1 (Euler–Maruyama, :func:`brownian_dynamics`):

    Q(t + dt) = Q(t) + dt F(Q(t)) + sqrt(2 T dt) ξ,   ξ ~ N(0, 1) from SeedSequence([seed, step])

A force source is any callable ``force_fn(q) -> (F, n or None)`` on (lx, ly) arrays: the in-process
exact NEGF (:class:`NEGFForces`), a gRPC server stream (:class:`StreamForces`), or your own. Objects
with ``backend``/``model`` attributes are recorded as the producers of the trajectory.

Every step reached is recorded (ξ(t) always, Q/F/n every ``save_every`` steps) in a
:mod:`neqforce.trajectory` HDF5 file that is rewritten atomically at each checkpoint. Because the
noise of step s depends only on (seed, s), a run resumed from its checkpoint (:meth:`Simulation.open`)
continues bit-for-bit as if it had never stopped. Example::

    from neqforce.physics import HolsteinParams, cdw_ground_state
    from neqforce.client.simulate import NEGFForces, Simulation

    p = HolsteinParams(lx=10, ly=8, voltage=3.0)
    sim = Simulation.create("run.h5", p, cdw_ground_state(p), n_steps=200, seed=1)
    traj = sim.run(NEGFForces(p), progress=True)
    t, xi = traj.xi_series()
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.physics import (
    BDState,
    ForceFn,
    HolsteinParams,
    brownian_dynamics,
    bulk_cdw_amplitude,
    cdw_ground_state,
    check_configuration,
    domain_wall_position,
    negf_forces,
    staggered_sign,
)
from neqforce.physics.ground_state import RelaxProgress, is_packaged
from neqforce.trajectory import Trajectory, TrajectoryWriter

from .answers import Answer, answer_of, note_answer
from .interrupt import guarded

#: Called after every recorded step with the state and its domain-wall position ξ.
StepCallback = Callable[[BDState, float], None]


#: Largest lattice whose V = 0 CDW is relaxed with exact NEGF (~100 solves of O(N^3)); beyond it the
#: relaxed profile of a smaller reference lattice is extended (see :func:`initial_cdw`).
MAX_RELAX_SITES = 1024
#: Width (in y) of the reference lattice for wide devices (even: a commensurate checkerboard).
REFERENCE_LY = 28


def relaxed_lattice(params: HolsteinParams, max_relax_sites: int = MAX_RELAX_SITES) -> HolsteinParams:
    """The lattice whose V = 0 CDW :func:`initial_cdw` relaxes with exact NEGF: ``params`` itself up to
    ``max_relax_sites`` sites or when its relaxed state ships with the package (60×28, 80×28), else a
    reference of at most 30 columns (see :func:`initial_cdw`)."""
    if params.n_sites <= max_relax_sites or is_packaged(params):
        return params
    lx_ref = min(params.lx, 30)
    if lx_ref * params.ly <= max_relax_sites:
        ly_ref = params.ly
    else:  # an even width: a commensurate checkerboard (only the x profile is used)
        ly_ref = min(REFERENCE_LY, max(2, (max_relax_sites // lx_ref) // 2 * 2))
    return params.replace(lx=lx_ref, ly=ly_ref)


def initial_cdw(params: HolsteinParams, max_relax_sites: int = MAX_RELAX_SITES,
                progress: RelaxProgress | None = None) -> tuple[np.ndarray, str]:
    """The quench's initial state, shape (lx, ly), and a description of how it was made.

    Up to ``max_relax_sites`` sites, or when it ships with the package: the relaxed V = 0 CDW itself
    (:func:`cdw_ground_state`, exact NEGF, cached). Larger devices (which only an ML model can drive)
    get Q = (-1)^(x+y) A(x), with the amplitude profile A(x) = mean_y |Q| of the relaxed CDW of a
    reference lattice of at most 30 columns: its left half next to the gate, its right half next to the
    substrate, and its central (bulk) amplitude in between. ``progress(solves, max|F|)`` follows a
    relaxation that is not cached.
    """
    ref = relaxed_lattice(params, max_relax_sites)
    if ref is params:
        q = cdw_ground_state(params, progress=progress)
        return q, f"relaxed V = 0 CDW on {params.lx}×{params.ly} (exact NEGF)"
    lx_ref, ly_ref = ref.lx, ref.ly
    profile = np.mean(np.abs(cdw_ground_state(ref, progress=progress)), axis=1)
    half = lx_ref // 2
    amplitude = np.full(params.lx, profile[half])
    amplitude[:half] = profile[:half]
    amplitude[params.lx - (lx_ref - half):] = profile[half:]
    q = staggered_sign(params.lx, params.ly) * amplitude[:, None]
    return q, (f"V = 0 CDW on {params.lx}×{params.ly} built from the relaxed {lx_ref}×{ly_ref} profile "
               f"(edges from the reference, bulk amplitude {profile[half]:.3f} in between)")


class NEGFForces:
    """In-process exact NEGF force field (F, n) for fixed parameters (docs/physics.md)."""

    backend = "negf"
    model = "exact-negf"

    def __init__(self, params: HolsteinParams) -> None:
        self.params = params

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return negf_forces(q, self.params)

    @property
    def answer(self) -> Answer:
        """What answered the last call (recorded per step, :mod:`neqforce.client.answers`)."""
        return Answer(self.backend, self.model, False, "exact NEGF in this process", 0.0)


class StreamForces:
    """Adapts a :class:`neqforce.client.ForceClient` stream (``stream.compute(q) -> ForceResult``)
    to a force function, and counts which backend/model answered each request."""

    def __init__(self, stream: Any, server: str = "") -> None:
        self.stream = stream
        self.server = server
        self.usage: Counter[tuple[str, str]] = Counter()
        self.last: Any = None

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.stream.compute(q)
        self.usage[(str(result.backend), str(result.model))] += 1
        self.last = result
        return np.asarray(result.force, dtype=np.float64), result.density

    @property
    def answer(self) -> Answer | None:
        """What answered the last call: backend, model, flagged, reason, force_std_max."""
        return None if self.last is None else answer_of(self.last)

    @property
    def backend(self) -> str:
        return ",".join(sorted({b for b, _ in self.usage}))

    @property
    def model(self) -> str:
        return ",".join(sorted({m for _, m in self.usage if m}))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _merge(old: str, new: str) -> str:
    """Comma-joined union of two comma-separated provenance lists (order kept)."""
    items = [s for s in (old.split(",") + new.split(",")) if s]
    return ",".join(dict.fromkeys(items))


class Simulation:
    """One BD run bound to its trajectory file: create it, run it (maybe in pieces), resume it."""

    def __init__(self, writer: TrajectoryWriter) -> None:
        self.writer = writer
        traj = writer.traj
        if traj.checkpoint_q is None or not np.all(np.isfinite(traj.checkpoint_q)):
            raise ValueError(f"{writer.path} has no resume point (checkpoint/q)")
        if not np.isfinite(traj.q0_bulk):
            traj.q0_bulk = bulk_cdw_amplitude(traj.params)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | os.PathLike[str], params: HolsteinParams, q0: np.ndarray, *,
               n_steps: int, dt: float = 0.1, seed: int = 0, save_every: int = 10,
               extra: dict[str, Any] | None = None, overwrite: bool = False) -> Simulation:
        """Start a new run from ``q0`` (the state at step 0, shape (lx, ly)) and write its file.

        The file exists (with step 0 pending) as soon as this returns, so even a run interrupted
        before its first force evaluation can be resumed. Refuses to replace an existing file
        unless ``overwrite``.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (resume it, or choose another output)")
        if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
        if isinstance(save_every, bool) or int(save_every) != save_every or save_every < 1:
            raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be > 0, got {dt}")
        q0 = check_configuration(q0, params, name="initial configuration")
        traj = Trajectory(params=params, seed=int(seed), dt=float(dt), save_every=int(save_every),
                          n_steps=int(n_steps), q0_bulk=bulk_cdw_amplitude(params),
                          extra={"segments": [], **(extra or {})})
        traj.checkpoint_step = -1  # nothing recorded yet; checkpoint_q is the state at step 0
        traj.checkpoint_q = np.array(q0, dtype=np.float64)
        writer = TrajectoryWriter(path, traj)
        writer.checkpoint()
        return cls(writer)

    @classmethod
    def open(cls, path: str | os.PathLike[str], n_steps: int | None = None) -> Simulation:
        """Reopen a run to continue it from its checkpoint; ``n_steps`` may extend its length."""
        writer = TrajectoryWriter.resume(path)  # validated: TrajectoryError (a ValueError) if not
        sim = cls(writer)
        if n_steps is not None:
            if n_steps < sim.last_step:
                raise ValueError(f"{path} already reached step {sim.last_step}; cannot shorten it to "
                                 f"{n_steps} steps")
            if n_steps != writer.traj.n_steps:
                writer.traj.n_steps = int(n_steps)
                writer.traj.complete = sim.last_step >= n_steps
        return sim

    # ------------------------------------------------------------------ state
    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def trajectory(self) -> Trajectory:
        return self.writer.traj

    @property
    def params(self) -> HolsteinParams:
        return self.writer.traj.params

    @property
    def last_step(self) -> int:
        """Last step recorded (-1 before the first)."""
        return self.writer.traj.checkpoint_step

    @property
    def complete(self) -> bool:
        return self.last_step >= self.writer.traj.n_steps

    # ------------------------------------------------------------------ dynamics
    def run(self, force_fn: ForceFn, *, checkpoint_every: int = 50, checkpoint_seconds: float = 60.0,
            stop_at: int | None = None, callback: StepCallback | None = None,
            progress: bool = False, segment_info: dict[str, Any] | None = None) -> Trajectory:
        """Integrate until step ``n_steps`` (or ``stop_at``), recording every step; returns the trajectory.

        Checkpoints (atomic rewrite of the file) every ``checkpoint_every`` steps (less often if
        writing would take over 10 % of the time), at least every ``checkpoint_seconds`` of wall
        time, at the end, and on any exception — Ctrl-C included, which is re-raised after the
        file holds everything done so far. Where checkpoints fall never changes the trajectory.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        traj = self.writer.traj
        end = traj.n_steps if stop_at is None else min(int(stop_at), traj.n_steps)
        last = self.last_step
        start = max(last, 0)  # the checkpoint state is recomputed but not recorded twice
        if end <= last:
            self.writer.checkpoint(complete=self.complete)
            return traj
        segment = {"start_step": last + 1, "end_step": last, "started": _now(), "wall_s": 0.0,
                   **(segment_info or {})}
        traj.extra.setdefault("segments", []).append(segment)
        bar = _progress_bar(start=last + 1, end=end) if progress else None
        wall0 = t_ckpt = time.monotonic()
        cost = 0.0  # seconds the last checkpoint took to write

        def checkpoint(complete: bool = False) -> None:
            segment["end_step"] = self.last_step
            segment["wall_s"] = round(time.monotonic() - wall0, 3)
            for name in ("backend", "model"):
                value = str(getattr(force_fn, name, "") or "")
                segment[name] = value
                setattr(traj, name, _merge(getattr(traj, name), value))
            self.writer.checkpoint(complete=complete)

        states = brownian_dynamics(traj.checkpoint_q, force_fn, n_steps=end - start, dt=traj.dt,
                                   temperature=traj.params.temperature, seed=traj.seed, start_step=start)
        with guarded() as guard:
            try:
                # Ctrl-C never raises asynchronously in here (it could leave a lock of tqdm, HDF5 or gRPC
                # held): it is raised between steps, and a force call in flight is cancelled
                with guard.protected():
                    for state in states:
                        if state.step <= last:
                            continue
                        xi = domain_wall_position(state.q, traj.params, traj.q0_bulk)
                        spread = note_answer(traj.extra, state.step, getattr(force_fn, "answer", None))
                        with guard.critical():
                            self.writer.record(state.step, state.q, state.force, state.density, xi,
                                               force_std_max=spread)
                        if bar is not None:
                            bar.set_postfix_str(f"xi={xi:.2f}", refresh=False)
                            bar.update(1 if state.step > 0 else 0)  # step 0 is the initial state
                        if callback is not None:
                            callback(state, xi)
                        since = time.monotonic() - t_ckpt
                        # a due checkpoint is skipped while writing it would cost over 10 % of the run
                        # time; time-based ones always happen
                        if state.step < end and ((state.step % checkpoint_every == 0 and since >= 9 * cost)
                                                 or since >= checkpoint_seconds):
                            t0 = time.monotonic()
                            with guard.critical():
                                checkpoint()
                            t_ckpt = time.monotonic()
                            cost = t_ckpt - t0
                        guard.check()  # the step is recorded: stop here if Ctrl-C was pressed
                    guard.check()
            except BaseException:
                try:
                    with guard.critical():
                        checkpoint()
                finally:
                    if bar is not None:
                        bar.close()
                raise
            with guard.critical():
                checkpoint(complete=self.complete)
        if bar is not None:
            bar.close()
        return traj


def _progress_bar(start: int, end: int):
    """tqdm bar over BD steps (``end`` in all, ``start`` already done; ETA; ξ shown as a postfix)."""
    from tqdm import tqdm

    return tqdm(total=end, initial=max(0, start - 1), unit="step", desc="BD", dynamic_ncols=True,
                smoothing=0.1, postfix="xi=?")


def simulate(force_fn: ForceFn, params: HolsteinParams, path: str | os.PathLike[str], q0: np.ndarray, *,
             n_steps: int, dt: float = 0.1, seed: int = 0, save_every: int = 10,
             checkpoint_every: int = 50, progress: bool = False, overwrite: bool = False) -> Trajectory:
    """One-call convenience: create a run at ``path`` from ``q0`` and integrate it to the end."""
    sim = Simulation.create(path, params, q0, n_steps=n_steps, dt=dt, seed=seed, save_every=save_every,
                            overwrite=overwrite)
    return sim.run(force_fn, checkpoint_every=checkpoint_every, progress=progress)
