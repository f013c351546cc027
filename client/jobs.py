"""The client's three jobs as library functions (the CLI in :mod:`neqforce.client.cli` only parses options):

* :func:`run_simulation` — a BD quench against a server (embedded when ``server`` is None), with
  trajectory, ξ(t) CSV and figures; resumable.
* :func:`compute_forces_file` — forces of one configuration read from a file, written to a file.
* :func:`fetch_server_info` / :func:`format_server_info` — what a server offers.

Errors a user can fix (bad parameters, files, addresses) raise ValueError with a one-line message.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from neqforce.physics import HolsteinParams, check_configuration
from neqforce.physics.ground_state import cache_path, is_cached
from neqforce.runlock import FolderLock
from neqforce.trajectory import TrajectoryMoved

from .cost import COST_LIMIT_S, CostRefused, format_duration, project_cost, refusal_message, refuse
from .embedded import connect
from .interrupt import guarded, surfaced_interrupt
from .outputs import RunOutputs, load_configuration, write_forces, write_xi_csv
from .simulate import Simulation, StreamForces, initial_cdw, relaxed_lattice

Echo = Callable[[str], None]

#: Backends a request may name (the server routes "auto" to a covering model, else exact NEGF).
BACKENDS = ("auto", "onnx", "negf")
#: Steps of a new run when none are given (the wall crosses a 30-column device in ~500 steps).
DEFAULT_STEPS = 600
DEFAULT_SAVE_EVERY = 10


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    return backend


def resolve_params(overrides: dict[str, Any], base: HolsteinParams | None = None,
                   shape: tuple[int, int] | None = None) -> HolsteinParams:
    """``base`` (default: the defaults of docs/physics.md) with the explicitly given fields replaced.

    ``shape`` is the lattice size imposed by a configuration file; an explicit lx/ly that
    contradicts it is an error.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    base = base or HolsteinParams()
    if shape is not None:
        for name, value in zip(("lx", "ly"), shape, strict=True):
            if name in given and given[name] != value:
                raise ValueError(f"--{name} {given[name]} contradicts the configuration's shape "
                                 f"(lx, ly) = {shape}")
            given[name] = value
    return base.replace(**given)


# ---------------------------------------------------------------------------------------- simulate
@dataclass
class SimulateOptions:
    """Everything ``neqforce simulate`` can be told (None = default, or the file's value on resume)."""

    out: Path = Path("runs/sim")
    params: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    dt: float | None = None
    seed: int | None = None
    save_every: int | None = None
    checkpoint_every: int = 50
    init: str = "cdw"
    frame: int | None = None
    backend: str = "auto"
    server: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    model: str | None = None
    timeout: float = 300.0
    resume: bool = False
    overwrite: bool = False
    plots: bool = True
    progress: bool = True
    #: Projected wall time (s) beyond which unrequested exact NEGF is refused (client/cost.py).
    cost_limit_s: float = COST_LIMIT_S


@dataclass
class SimulationReport:
    """What a simulation job produced. ``wall_s``: the whole job; ``bd_wall_s``: the BD steps run by
    this invocation (``steps_run`` of them), without server start-up or the initial-state relaxation."""

    outputs: RunOutputs
    last_step: int
    n_steps: int
    complete: bool
    backend: str
    model: str
    wall_s: float
    written: list[Path]
    final_xi: float = float("nan")
    interrupted: bool = False
    steps_run: int = 0
    bd_wall_s: float = 0.0
    relax_wall_s: float = 0.0


def _check_resume_consistent(sim: Simulation, opts: SimulateOptions) -> None:
    """On --resume, explicitly given parameters must match the run's."""
    traj = sim.trajectory
    stored = traj.params.to_dict() | {"dt": traj.dt, "seed": traj.seed, "save_every": traj.save_every}
    given = {k: v for k, v in opts.params.items() if v is not None}
    given |= {k: getattr(opts, k) for k in ("dt", "seed", "save_every") if getattr(opts, k) is not None}
    for name, value in given.items():
        if not np.isclose(float(value), float(stored[name]), rtol=1e-12, atol=0.0):
            raise ValueError(f"--{name.replace('_', '-')} {value:g} differs from the run being resumed "
                             f"({stored[name]:g}); resume without it, or start a new run")
    if opts.init != "cdw" or opts.frame is not None:
        raise ValueError("--init/--frame cannot be used with --resume (the run continues from its "
                         "checkpoint)")


def check_options(opts: SimulateOptions) -> None:
    """Every option that can be checked without the server or the initial state (ValueError, one line)."""
    _check_backend(opts.backend)
    if opts.steps is not None and opts.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {opts.steps}")
    if opts.dt is not None and not (np.isfinite(opts.dt) and opts.dt > 0):
        raise ValueError(f"--dt must be > 0 (time step in 1/gamma), got {opts.dt:g}")
    if opts.seed is not None and opts.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {opts.seed}")
    if opts.save_every is not None and opts.save_every < 1:
        raise ValueError(f"--save-every must be >= 1 (save_every), got {opts.save_every}")
    if opts.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    if not (np.isfinite(opts.timeout) and opts.timeout > 0):
        raise ValueError(f"--timeout must be > 0 seconds, got {opts.timeout:g}")
    if opts.model is not None and not Path(opts.model).is_file():
        raise ValueError(f"model file not found: {opts.model}")
    if opts.tls_ca is not None and not Path(opts.tls_ca).is_file():
        raise ValueError(f"TLS CA file not found: {opts.tls_ca}")


def check_output_folder(outputs: RunOutputs) -> None:
    """The folder of the run's files exists (created if needed) and is writable, or a ValueError naming it."""
    folder = outputs.trajectory.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".neqforce-write-test."):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot write the output folder {folder} (--out): {reason}") from None


def _initial_state(opts: SimulateOptions, echo: Echo) -> tuple[HolsteinParams, Callable[[], np.ndarray]]:
    """Parameters and the initial configuration (a loader, so the slow CDW relaxation runs last)."""
    if opts.init == "cdw":
        if opts.frame is not None:
            raise ValueError("--frame applies to --init FILE.h5")
        params = resolve_params(opts.params)

        def load() -> np.ndarray:
            return _relaxed_cdw(params, echo, opts.progress)

        return params, load
    conf = load_configuration(opts.init, frame=opts.frame)
    params = resolve_params(opts.params, shape=conf.q.shape)
    check_configuration(conf.q, params, name="initial configuration")

    def load_file() -> np.ndarray:
        echo(f"initial state: {conf.source}")
        return conf.q

    return params, load_file


def _relaxed_cdw(params: HolsteinParams, echo: Echo, progress: bool) -> np.ndarray:
    """:func:`initial_cdw`, saying what it does when it has to relax a lattice (exact NEGF, minutes)."""
    ref = relaxed_lattice(params)
    if is_cached(ref):
        q, how = initial_cdw(params)
        echo(f"initial state: {how}")
        return q
    where = cache_path(ref)
    echo(f"relaxing the V = 0 CDW on {ref.lx}×{ref.ly} with exact NEGF (about 100 solves; done once, "
         f"then cached in {where})")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="solve", desc="CDW relaxation", dynamic_ncols=True, postfix="max|F|=?")

    def report(solves: int, err: float) -> None:
        if bar is not None:
            bar.update(solves - bar.n)
            bar.set_postfix_str(f"max|F|={err:.1e}", refresh=False)

    t0 = time.monotonic()
    try:
        q, how = initial_cdw(params, progress=report)
    finally:
        if bar is not None:
            bar.close()
    echo(f"initial state: {how}; relaxed in {format_duration(time.monotonic() - t0)}"
         + (f", cached in {where}" if where.exists() else ""))
    return q


def _misfit(model: dict[str, Any], params: HolsteinParams, rtol: float) -> list[str]:
    """Why ``model`` (an entry of GetServerInfo) does not cover ``params``: [] when it does. Fixed
    parameters must match within rtol·max(1, |value|), ranged ones (the domain) lie inside it."""
    physical = params.physical()
    values = {**physical, "lx": float(params.lx), "ly": float(params.ly)}
    fixed, domain = model.get("params") or {}, model.get("domain") or {}
    out = [f"{k} = {physical[k]:g} (model: {v:g})" for k, v in fixed.items()
           if k in physical and k not in domain and abs(physical[k] - v) > rtol * max(1.0, abs(v))]
    out += [f"{k} = {values[k]:g} (model: {lo:g}..{hi:g})" for k, (lo, hi) in domain.items()
            if k in values and not lo <= values[k] <= hi]
    return out


def _predicted_route(info: dict[str, Any], params: HolsteinParams, backend: str) -> str:
    """Which backend the server is expected to use for ``params``, and why (from GetServerInfo)."""
    if backend == "negf":
        return "exact NEGF (requested with --backend negf)"
    rtol = float((info.get("routing") or {}).get("rtol", 1e-6))
    models = info.get("models") or []
    for m in models:
        if not _misfit(m, params, rtol):
            return f"ONNX model {m.get('name', '?')} (it covers these parameters)"
    if not models:
        return "exact NEGF (the server has no ML model)" if backend == "auto" else \
            "ONNX requested, but the server has no model (it will refuse)"
    why = ", ".join(_misfit(models[0], params, rtol))
    if backend == "onnx":
        return f"ONNX requested, but no model covers {why}"
    return f"exact NEGF (no model covers {why})"


def run_simulation(opts: SimulateOptions, echo: Echo = print) -> SimulationReport:
    """Run (or resume) a BD quench against a force server and write trajectory, CSV and figures.

    Every option is checked before any work. After the first step the projected wall time is
    printed; exact NEGF that was not requested by name and would take longer than
    ``opts.cost_limit_s`` is stopped there (:class:`neqforce.client.cost.CostRefused`, one line).
    KeyboardInterrupt is re-raised after the trajectory (and the CSV) hold every step done; the
    report of an interrupted run is attached to the exception as ``exc.report``.
    """
    outputs = RunOutputs.at(opts.out)
    traj = outputs.trajectory  # one writer per trajectory file (.NAME.lock beside it)
    with guarded(), FolderLock(traj.parent, "--out", name=f".{traj.name}.lock", target=traj) as lock:
        return _run_simulation(opts, outputs, echo, lock)


def _refuse_existing(path: Path, opts: SimulateOptions) -> None:
    """ValueError when a new run (no --resume) would replace ``path`` without --overwrite."""
    if path.exists() and not opts.overwrite:
        raise ValueError(f"{path} already exists (add --resume to continue it, --overwrite to start over, "
                         f"or choose another --out)")


def _run_simulation(opts: SimulateOptions, outputs: RunOutputs, echo: Echo,
                    lock: FolderLock) -> SimulationReport:
    check_options(opts)
    path = outputs.trajectory
    if opts.resume:
        if not path.exists():
            raise ValueError(f"nothing to resume: {path} does not exist")
        sim: Simulation | None = Simulation.open(path, n_steps=opts.steps)
        _check_resume_consistent(sim, opts)
        params, load_q0 = sim.params, None
    else:
        _refuse_existing(path, opts)
        params, load_q0 = _initial_state(opts, echo)
        sim = None
    check_output_folder(outputs)
    lock.acquire()  # one writer per trajectory file (taken at the start when the folder existed)
    if sim is None:
        _refuse_existing(path, opts)  # again under the lock: another process may have written it meanwhile
    if sim is not None and sim.complete:
        echo(f"{path} is already complete ({sim.trajectory.n_steps} steps); rewriting ξ(t) and figures")
        return _finish(sim, outputs, opts, echo, wall=0.0)
    if sim is not None:
        echo(f"resuming {path} at step {max(sim.last_step, 0)} of {sim.trajectory.n_steps}")

    wall0 = time.monotonic()
    created = False
    creating = False  # _create was entered: a Ctrl-C inside it can leave the new file without ``sim``
    relax_s = 0.0
    run_info: dict[str, Any] = {"steps_before": sim.last_step if sim is not None else -1, "bd_s": 0.0}

    def _save_interrupted(interrupt: KeyboardInterrupt, exc: BaseException) -> NoReturn:
        """Ctrl-C: keep every step done (write ξ(t), figures), attach the report, re-raise ``interrupt``."""
        cause = None if interrupt is exc else exc
        if sim is None or (created and sim.last_step < 0):
            if created or creating:
                path.unlink(missing_ok=True)  # nothing computed: leave no half-started run
            raise interrupt from cause
        echo(f"interrupted: steps 0..{sim.last_step} are saved in {path}; writing ξ(t)"
             + (" and figures" if opts.plots else "") + " (Ctrl-C again to skip)…")
        interrupt.report = _finish(  # type: ignore[attr-defined]
            sim, outputs, opts, echo, wall=time.monotonic() - wall0, interrupted=True, run_info=run_info,
            relax_s=relax_s)
        raise interrupt from cause

    try:
        with connect(opts.server, token=opts.token, tls_ca=opts.tls_ca, model=opts.model,
                     timeout=opts.timeout) as conn:
            info = conn.client.server_info()  # fails fast (before any slow set-up) on a bad address/token
            echo(f"forces from {conn.describe()}: {_models_line(info)}")
            echo(f"backend {opts.backend!r} → expected: {_predicted_route(info, params, opts.backend)}")
            if sim is None:
                t0 = time.monotonic()
                q0 = load_q0()
                relax_s = time.monotonic() - t0
                creating = True
                sim = _create(path, params, q0, opts)
                created = True
                run_info["steps_before"] = -1
            _run_steps(sim, conn, info, opts, echo, run_info)
    except KeyboardInterrupt as exc:
        _save_interrupted(exc, exc)
    except CostRefused:
        if created and sim is not None:
            sim.path.unlink(missing_ok=True)  # one step of a run that will not be continued as it is
        raise
    except BaseException as exc:
        if surfaced_interrupt(exc):  # a Ctrl-C that came out as another exception: still the interrupt
            _save_interrupted(KeyboardInterrupt(), exc)
        if isinstance(exc, TrajectoryMoved):  # the file at ``path`` is not this run's any more: leave it
            raise
        if (sim is None and creating) or (sim is not None and created and sim.last_step < 0):
            path.unlink(missing_ok=True)
        elif sim is not None and sim.last_step >= 0:
            write_xi_csv(outputs.xi_csv, sim.trajectory)
            echo(f"steps 0..{sim.last_step} are saved in {path}; after fixing the problem, "
                 f"continue with: {resume_command(opts)}")
        raise
    return _finish(sim, outputs, opts, echo, wall=time.monotonic() - wall0, run_info=run_info,
                   relax_s=relax_s)


def _run_steps(sim: Simulation, conn: Any, info: dict[str, Any], opts: SimulateOptions, echo: Echo,
               run_info: dict[str, Any]) -> None:
    """The BD steps of one invocation, streaming forces from ``conn``; checks the cost after step one."""
    params = sim.params
    say = _tqdm_echo(echo, opts.progress)
    if opts.backend != "onnx" and params.n_sites > 1000:
        say(f"measuring the first step ({params.lx}×{params.ly} = {params.n_sites} sites; on exact NEGF "
            f"this can take minutes)…")
    with _closing(conn.client.stream(params, backend=opts.backend, want_density=True)) as stream:
        forces = StreamForces(stream, server=conn.address)
        t_start = time.monotonic()
        first = True
        flagged = False
        end = sim.trajectory.n_steps

        def after_step(state: Any, xi: float) -> None:
            nonlocal first, flagged
            if forces.last is not None and not flagged and "OUTSIDE_DOMAIN" in forces.last.reason:
                flagged = True  # e.g. the metal reached the right electrode (docs/nonlocality.md)
                if not first:  # the first answer's reason is printed below
                    say(f"warning: from step {state.step} the model answers outside its validated domain "
                        f"({forces.last.reason})")
            if not first or forces.last is None:
                return
            first = False
            r = forces.last
            seconds = time.monotonic() - t_start
            remaining = max(0, end - state.step)
            proj = project_cost(str(r.backend), seconds, remaining)
            say(f"backend: {r.backend}, model: {r.model or '-'} ({r.reason})")
            say(f"first step: {format_duration(seconds)}; projected for the {remaining} steps left: "
                f"{format_duration(proj.total_s)}")
            if refuse(proj, opts.backend, opts.cost_limit_s):
                raise CostRefused(refusal_message(proj, lattice=params.shape, limit_s=opts.cost_limit_s))

        t0 = time.monotonic()
        try:
            sim.run(forces, checkpoint_every=opts.checkpoint_every, callback=after_step,
                    progress=opts.progress,
                    segment_info={"server": "embedded" if conn.embedded else conn.address,
                                  "server_version": str(info.get("version", "")),
                                  "server_models": {str(m.get("name")): str(m.get("sha256", ""))
                                                    for m in info.get("models", [])},
                                  "backend_requested": opts.backend})
        finally:
            run_info["bd_s"] = time.monotonic() - t0


@contextmanager
def _closing(stream: Any) -> Iterator[Any]:
    """Close a ForceStream at the end of the block. When the block is left by an exception (Ctrl-C in
    the middle of a gRPC call leaves the call half-done), the stream is cancelled, not drained: no
    waiting for a server that may be busy with a long NEGF call, and no error replacing the exception."""
    try:
        yield stream
    except BaseException:
        with suppress(Exception):
            stream.cancel()
        raise
    stream.close()


def _create(path: Path, params: HolsteinParams, q0: np.ndarray, opts: SimulateOptions) -> Simulation:
    """A new run file with the options' settings (defaults where None)."""
    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    init = opts.init if opts.frame is None else f"{opts.init}[{opts.frame}]"
    return Simulation.create(path, params, q0, n_steps=pick(opts.steps, DEFAULT_STEPS), dt=pick(opts.dt, 0.1),
                             seed=pick(opts.seed, 0), save_every=pick(opts.save_every, DEFAULT_SAVE_EVERY),
                             extra={"init": init}, overwrite=opts.overwrite)


def _models_line(info: dict[str, Any]) -> str:
    models = info.get("models") or []
    if not models:
        return "no ML model loaded (exact NEGF: seconds per step at 30×28)"
    return "model " + ", ".join(f"{m.get('name', '?')}" for m in models)


def resume_command(opts: SimulateOptions) -> str:
    """The command line that continues the run of ``opts``."""
    cmd = f"neqforce simulate --out {opts.out} --resume"
    if opts.server:
        cmd += f" --server {opts.server}"
    if opts.backend != "auto":
        cmd += f" --backend {opts.backend}"
    if opts.model:
        cmd += f" --model {opts.model}"
    return cmd


def _tqdm_echo(echo: Echo, progress: bool) -> Echo:
    """Print above a running progress bar instead of through it."""
    if not progress:
        return echo
    from tqdm import tqdm

    return lambda text: tqdm.write(text)


def _finish(sim: Simulation, outputs: RunOutputs, opts: SimulateOptions, echo: Echo, wall: float,
            interrupted: bool = False, run_info: dict[str, Any] | None = None,
            relax_s: float = 0.0) -> SimulationReport:
    traj = sim.trajectory
    written = [outputs.trajectory, write_xi_csv(outputs.xi_csv, traj)]
    if opts.plots and traj.frame_step:
        from .plots import plot_density_snapshots, plot_xi

        written.append(plot_density_snapshots(traj, outputs.density_png))
        written.append(plot_xi(traj, outputs.xi_png))
    run_info = run_info or {}
    # BD steps integrated by this invocation (a resumed run restarts from its checkpoint step)
    steps_run = max(0, sim.last_step - max(int(run_info.get("steps_before", sim.last_step)), 0))
    return SimulationReport(outputs=outputs, last_step=sim.last_step, n_steps=traj.n_steps,
                            complete=sim.complete, backend=traj.backend, model=traj.model, wall_s=wall,
                            written=written, interrupted=interrupted,
                            final_xi=traj.series_xi[-1] if traj.series_xi else float("nan"),
                            steps_run=steps_run, bd_wall_s=float(run_info.get("bd_s", 0.0)),
                            relax_wall_s=relax_s)


# ---------------------------------------------------------------------------------------- forces
@dataclass
class ForcesReport:
    """One force evaluation written to a file."""

    out: Path
    params: HolsteinParams
    backend: str
    model: str
    reason: str
    max_abs_force: float


def compute_forces_file(input_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                        frame: int | None = None, params: dict[str, Any] | None = None,
                        backend: str = "auto", server: str | None = None, token: str | None = None,
                        tls_ca: str | None = None, model: str | None = None,
                        timeout: float = 300.0) -> ForcesReport:
    """Forces (and densities) of the configuration in ``input_path`` (.npy or .h5), saved to ``out``.

    Parameters: those stored in an .h5 input, else the defaults of docs/physics.md; the lattice size is the
    array's; ``params`` overrides fields explicitly.
    """
    _check_backend(backend)
    out = Path(out)
    if out.suffix.lower() not in (".npy", ".h5", ".hdf5"):
        raise ValueError(f"{out}: unsupported output type {out.suffix!r} (use .npy or .h5)")
    conf = load_configuration(input_path, frame=frame)
    p = resolve_params(params or {}, base=conf.params, shape=conf.q.shape)
    with connect(server, token=token, tls_ca=tls_ca, model=model, timeout=timeout) as conn:
        r = conn.client.compute_forces(conf.q, p, backend=backend, want_density=True)
    force = np.asarray(r.force, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(force)))
    if bad:
        raise RuntimeError(f"the server returned non-finite forces at {bad} of {force.size} sites (backend "
                           f"{r.backend}, model {r.model or '-'}); nothing was written to {out}")
    write_forces(out, conf.q, force, r.density, p, backend=str(r.backend), model=str(r.model),
                 extra={"source": conf.source, "server": "embedded" if server is None else server,
                        "reason": str(getattr(r, "reason", ""))})
    return ForcesReport(out=out, params=p, backend=str(r.backend), model=str(r.model),
                        reason=str(getattr(r, "reason", "")), max_abs_force=float(np.max(np.abs(force))))


# ---------------------------------------------------------------------------------------- info
def fetch_server_info(server: str | None = None, *, token: str | None = None, tls_ca: str | None = None,
                      model: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """The server's self-description (GetServerInfo) as a dict, with the address added."""
    with connect(server, token=token, tls_ca=tls_ca, model=model, timeout=timeout) as conn:
        info = dict(conn.client.server_info())
        info["embedded"] = conn.embedded
    return info


def format_server_info(info: dict[str, Any]) -> str:
    """Readable multi-line summary of :func:`fetch_server_info`."""
    where = info.get("target", info.get("address", "?"))
    lines = [f"{info.get('name', 'server')} {info.get('version', '')} at {where}"
             + (" (embedded)" if info.get("embedded") else "")]
    if info.get("api"):
        lines.append(f"  api:            {info['api']}")
    lines.append(f"  authentication: {'bearer token required' if info.get('auth_required') else 'none'}")
    for b in info.get("backends", []):
        state = "available" if b.get("available", True) else "unavailable"
        detail = f" — {b['detail']}" if b.get("detail") else ""
        eps = b.get("execution_providers") or []
        lines.append(f"  backend {b.get('backend', '?'):<6} {state}{detail}"
                     + (f" [{', '.join(eps)}]" if eps else ""))
    models = info.get("models", [])
    if not models:
        lines.append("  models:         none (auto routes every request to exact NEGF)")
    for m in models:
        lines.append(f"  model {m.get('name', '?')}: {m.get('path', '')}")
        if m.get("sha256"):
            lines.append(f"    sha256      {m['sha256']}")
        if m.get("descriptor") or m.get("version"):
            lines.append(f"    descriptor  {m.get('descriptor', '')}, neqforce {m.get('version', '')}")
        params = m.get("params") or {}
        if params:
            lines.append("    covers      " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
        domain = m.get("domain") or {}
        if domain:
            lines.append("    domain      " + ", ".join(f"{k} in [{lo:g}, {hi:g}]"
                                                      for k, (lo, hi) in domain.items()))
        if m.get("metallic_columns_max") is not None:
            lines.append(f"    metallic    validated up to {m['metallic_columns_max']} metallic columns "
                         "(more: the answer is flagged OUTSIDE_DOMAIN)")
        if m.get("cdw_remnant"):
            rule = m["cdw_remnant"]
            lines.append(f"    remnant     with more than {rule['metallic_columns_over']} metallic columns, "
                         f"validated only while >= {rule['non_metallic_columns_min']} columns of CDW remain "
                         "(fewer: flagged OUTSIDE_DOMAIN)")
        if m.get("force_std_threshold"):
            lines.append(f"    spread      committee; threshold {m['force_std_threshold']:.4g} (force units: "
                         "above it AUTO recomputes with exact NEGF, or flags the answer)")
        metrics = m.get("metrics") or {}
        if metrics:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in list(metrics.items())[:6] if not isinstance(v, dict | list))
            if shown:
                lines.append(f"    metrics     {shown}")
    routing = info.get("routing") or {}
    if routing:
        lines.append(f"  routing:        auto uses a model when every parameter is within "
                     f"rtol = {routing.get('rtol', 0):g} of it, else NEGF")
    limits = info.get("limits") or {}
    if limits:
        lines.append("  limits:         " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    return "\n".join(lines)
