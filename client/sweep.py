"""``neqforce sweep``: ensembles of Brownian-dynamics runs over a parameter grid, on Dask.

    from neqforce.client.sweep import SweepOptions, run_sweep
    report = run_sweep(SweepOptions(out=Path("runs/sweep"), grid={"voltage": "2.5:3.5:0.5"}, seeds=8))

The sweep folder::

    sweep.json                       manifest: the request, versions, points (route, runs, status)
    runs/<point>/seed<k>/trajectory.h5, xi.csv    one run per (point, seed): the files of `simulate`
    summary.csv, phase_diagram.png, xi_families.png, summary.json (thresholds)

Each point's seeds form chunks (a Dask task each, :func:`neqforce.client.sweep_task.run_chunk`)
whose replicas advance together, one batched force call per step. The tasks write the trajectory
files themselves (atomically, on the shared file system); the client writes the manifest and the
summary. Rerunning the same command skips finished runs and resumes partial ones from their
checkpoints; Ctrl-C asks the tasks to checkpoint, stops, and prints the resume command.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neqforce.atomic import atomic_write_text
from neqforce.physics import HolsteinParams
from neqforce.runlock import FolderLock
from neqforce.trajectory import read_trajectory, software_versions

from .sweep_grid import GridPoint, grid_points, parse_grid
from .sweep_task import ChunkSpec, ForceSpec

Echo = Callable[[str], None]
MANIFEST = "sweep.json"
FORMAT = "neqforce.sweep/1"
BACKENDS = ("auto", "onnx", "negf")


@dataclass
class SweepOptions:
    """Everything ``neqforce sweep`` can be told."""

    out: Path = Path("runs/sweep")
    grid: dict[str, str] = field(default_factory=dict)
    seeds: int = 8
    first_seed: int = 0  # the runs use seeds first_seed … first_seed + seeds − 1
    steps: int = 600
    dt: float = 0.1
    save_every: int = 10
    checkpoint_every: int = 50
    backend: str = "auto"
    server: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    model: str | None = None
    timeout: float = 300.0
    scheduler: str | None = None
    workers: int | None = None
    chunk: int | None = None
    plots: bool = True
    progress: bool = True


@dataclass
class PointRoute:
    """How a point's forces are computed, and why."""

    backend: str  # onnx | negf (what the point is expected to run on)
    model: str
    reason: str
    kind: str  # force source of its tasks: onnx | negf | server
    model_path: str | None = None
    projection: str = ""
    probe_s: float | None = None  # measured seconds of one force call (probe of --server)


@dataclass
class SweepReport:
    out: Path
    points: int
    runs_total: int
    runs_complete: int
    replica_steps: int
    wall_s: float
    written: list[Path]
    thresholds: list[dict[str, Any]]
    interrupted: bool = False


# ------------------------------------------------------------------------------------------ planning
def _check_options(opts: SweepOptions) -> None:
    if opts.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {opts.backend!r}")
    if opts.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {opts.seeds}")
    if opts.first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0, got {opts.first_seed}")
    if opts.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {opts.steps}")
    if not (math.isfinite(opts.dt) and opts.dt > 0):
        raise ValueError(f"--dt must be > 0, got {opts.dt}")
    if opts.save_every < 1 or opts.checkpoint_every < 1:
        raise ValueError("--save-every and --checkpoint-every must be >= 1")
    if opts.chunk is not None and opts.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {opts.chunk}")
    if opts.server is not None and opts.model is not None:
        raise ValueError("--model selects the model computed in the workers; a running server (--server) "
                         "has its own (omit one of them)")
    if opts.model is not None and not Path(opts.model).is_file():
        raise ValueError(f"model file not found: {opts.model}")


def _local_models(opts: SweepOptions) -> dict[str, Any]:
    """The model the workers would load (``--model`` or the bundled one), loaded as the server does."""
    from neqforce.models import bundled_model_path

    from .sweep_task import onnx_model

    path = Path(opts.model) if opts.model else bundled_model_path()
    if not path.is_file():
        return {}
    model = onnx_model(str(path), 1)  # the session the tasks of an in-process worker then reuse
    return {model.name: model}


def _probe_q(params: HolsteinParams) -> np.ndarray:
    """A CDW checkerboard with the bulk amplitude: what a probe force call is timed on."""
    from neqforce.physics import bulk_cdw_amplitude, staggered_sign

    return staggered_sign(params.lx, params.ly) * bulk_cdw_amplitude(params)


def plan_routes(points: list[GridPoint], opts: SweepOptions) -> tuple[list[PointRoute], list[dict]]:
    """Route of every point, decided by the server's own rule (:func:`neqforce.server.routing.route`:
    AUTO = a model covering the point, fixed parameters and validity domain, else exact NEGF).

    In-worker forces: the rule is applied to the model the workers load. With ``--server``: each point
    is asked of the server with one probe call, whose answer (backend, reason, compute time) is the route.
    """
    if opts.server is not None:
        return _plan_on_server(points, opts)
    from neqforce.server.errors import RequestError
    from neqforce.server.routing import route
    from neqforce.v1 import force_service_pb2 as pb

    models = _local_models(opts)
    requested = {"auto": pb.BACKEND_AUTO, "onnx": pb.BACKEND_ONNX, "negf": pb.BACKEND_NEGF}[opts.backend]
    routes = []
    for p in points:
        try:  # no NEGF size cap in the workers: the projected cost decides (check_costs)
            chosen = route(p.params, requested, "", models, rtol=1e-6, negf_max_sites=1 << 62)
        except RequestError as exc:
            raise ValueError(f"{p.label}: {exc}") from None
        backend = "onnx" if chosen.backend == pb.BACKEND_ONNX else "negf"
        if backend == "negf" and opts.backend == "auto":
            reason = f"{chosen.reason} (AUTO routes it to exact NEGF)"
        else:
            reason = chosen.reason
        routes.append(PointRoute(backend=backend, model=chosen.model_name, reason=reason, kind=backend,
                                 model_path=str(chosen.model.path) if chosen.model is not None else None))
    info = [{"name": m.name, "sha256": m.sha256, "path": str(m.path)} for m in models.values()]
    return routes, info


def _plan_on_server(points: list[GridPoint], opts: SweepOptions) -> tuple[list[PointRoute], list[dict]]:
    from neqforce.client import ForceClient

    from .cost import timed

    routes = []
    with ForceClient(opts.server, token=opts.token, tls_ca=opts.tls_ca, timeout=opts.timeout) as client:
        info = client.server_info()
        for p in points:
            result, seconds = timed(client.compute_forces, _probe_q(p.params), p.params, backend=opts.backend,
                                    want_density=True)
            reason = str(result.reason)
            if result.backend == "negf" and opts.backend == "auto":
                reason += " (AUTO routes it to exact NEGF)"
            routes.append(PointRoute(backend=str(result.backend), model=str(result.model), reason=reason,
                                     kind="server", probe_s=seconds))
    models = [{"name": m["name"], "sha256": m.get("sha256", "")} for m in info.get("models", [])]
    return routes, models


def _negf_step_seconds(params: HolsteinParams, cache: dict[tuple[int, int], float]) -> float:
    """Measured wall seconds of one exact NEGF force evaluation at this lattice size (one BLAS thread)."""
    if params.shape not in cache:
        from threadpoolctl import threadpool_limits

        from neqforce.physics import negf_forces

        from .cost import timed

        with threadpool_limits(1):
            cache[params.shape] = timed(negf_forces, _probe_q(params), params)[1]
    return cache[params.shape]


def check_costs(points: list[GridPoint], routes: list[PointRoute], remaining: dict[str, list[int]],
                parallel: int, opts: SweepOptions, echo: Echo) -> None:
    """Say per point where its forces come from (and the projected cost of exact NEGF); refuse an
    exact-NEGF sweep over the limit unless ``--backend negf`` was given."""
    from .cost import CostRefused, format_duration, project_cost, refusal_message, refuse

    cache: dict[tuple[int, int], float] = {}
    total, negf_runs = 0.0, 0
    worst: Any = None
    for p, r in zip(points, routes, strict=True):
        left = [s for s in remaining[p.name] if s > 0]
        if r.backend == "negf" and left:
            per = r.probe_s if r.probe_s is not None else _negf_step_seconds(p.params, cache)
            proj = project_cost("negf", per, max(left), replicas=len(left), parallel=parallel)
            r.projection = proj.describe()
            total += proj.total_s
            negf_runs += len(left)
            worst = proj if worst is None or proj.total_s > worst.total_s else worst
            echo(f"  {p.label}: {r.reason}; {len(left)} run(s), projected {proj.describe()}")
        else:
            echo(f"  {p.label}: {r.backend} ({r.model}): {r.reason}" + ("" if left else " [done]"))
    if negf_runs:
        echo(f"exact NEGF: {negf_runs} run(s) on {parallel} worker thread(s), projected "
             f"{format_duration(total)} in all")
        summed = project_cost("negf", total, 1)
        if refuse(summed, requested=opts.backend):
            lattice = next(p.params.shape for p, r in zip(points, routes, strict=True) if r.backend == "negf")
            raise CostRefused(refusal_message(worst if worst.exceeds() else summed, lattice=lattice))


# ------------------------------------------------------------------------------------------ layout
def seed_list(opts: SweepOptions) -> list[int]:
    """The seeds of every point: first_seed … first_seed + seeds − 1 (seed s is `simulate --seed s`)."""
    return list(range(opts.first_seed, opts.first_seed + opts.seeds))


def run_path(out: Path, point: GridPoint, seed: int) -> Path:
    return out / "runs" / point.name / f"seed{seed}" / "trajectory.h5"


def _request(opts: SweepOptions, grid: dict[str, list], models: list[dict]) -> dict[str, Any]:
    """What determines the results (compared on resume)."""
    return {"grid": {k: list(v) for k, v in grid.items()}, "base": HolsteinParams().to_dict(),
            "seeds": seed_list(opts), "steps": opts.steps, "dt": opts.dt,
            "save_every": opts.save_every, "backend": opts.backend,
            "model": {"name": models[0]["name"], "sha256": models[0].get("sha256", "")} if (
                models and opts.server is None) else None,
            "server": opts.server}


def _check_same_request(out: Path, request: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); use another --out") from None
    if old.get("format") != FORMAT:
        raise ValueError(f"{out} holds something else than a sweep ({path}); use another --out")
    before = old.get("request", {})
    diff = [k for k in request if k != "server" and before.get(k) != request[k]]
    if diff:
        raise ValueError(f"{out} holds a different sweep (differs in: {', '.join(diff)}); rerun it with its "
                         f"own options or use another --out")


def _run_state(path: Path) -> tuple[int, bool]:
    """(last step, complete) of a run file; (-1, False) when absent or unreadable."""
    if not path.exists():
        return -1, False
    try:
        t = read_trajectory(path)
    except (ValueError, OSError, KeyError):
        return -1, False
    return t.last_step, t.complete


def _remove_stale_temporaries(out: Path) -> int:
    """Temporary files left by a writer that was killed mid-write (never a run: runs are renamed into
    place complete). Only called while no task of this sweep runs."""
    n = 0
    for tmp in (out / "runs").glob("*/*/*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def resume_command(opts: SweepOptions) -> str:
    """The command line that continues this sweep."""
    cmd = f"neqforce sweep --out {opts.out}"
    for name, spec in opts.grid.items():
        cmd += f" --{name.replace('_', '-')} {spec}"
    cmd += f" --seeds {opts.seeds} --steps {opts.steps}"
    if opts.first_seed:
        cmd += f" --first-seed {opts.first_seed}"
    for flag, value, default in (("--dt", opts.dt, 0.1), ("--save-every", opts.save_every, 10),
                                 ("--backend", opts.backend, "auto"), ("--server", opts.server, None),
                                 ("--model", opts.model, None), ("--scheduler", opts.scheduler, None),
                                 ("--workers", opts.workers, None), ("--chunk", opts.chunk, None)):
        if value != default:
            cmd += f" {flag} {value:g}" if isinstance(value, float) else f" {flag} {value}"
    return cmd


def _chunks(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def chunk_size(opts: SweepOptions, route: PointRoute, n_points: int, parallel: int) -> int:
    """Replicas per task: ``--chunk``; else one run per task on exact NEGF (batching saves nothing,
    parallel tasks do), and for ML all seeds of a point in as few tasks as keep every worker busy."""
    if opts.chunk is not None:
        return opts.chunk
    if route.backend == "negf" and route.kind != "server":
        return 1
    per_point = max(1, math.ceil(parallel / max(1, n_points)))
    return max(1, math.ceil(opts.seeds / per_point))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ running
def run_sweep(opts: SweepOptions, echo: Echo = print) -> SweepReport:
    """Run (or resume) the sweep of ``opts``; KeyboardInterrupt is re-raised after every task has
    checkpointed (or was stopped), with the report attached as ``exc.report``. One sweep at a time writes
    a folder (:class:`neqforce.runlock.FolderLock`: a second one is refused with one line)."""
    with FolderLock(Path(opts.out), "--out") as lock:
        return _run_sweep(opts, echo, lock)


def _run_sweep(opts: SweepOptions, echo: Echo, lock: FolderLock) -> SweepReport:
    _check_options(opts)
    grid = parse_grid(opts.grid)
    points = grid_points(grid)
    out = Path(opts.out)
    routes, models = plan_routes(points, opts)
    request = _request(opts, grid, models)
    _check_same_request(out, request)
    seeds = seed_list(opts)
    paths = {(p.name, s): run_path(out, p, s) for p in points for s in seeds}
    state = {str(path): _run_state(path) for path in paths.values()}
    remaining = {p.name: [0 if state[str(paths[p.name, s])][1] else opts.steps - max(
        state[str(paths[p.name, s])][0], 0) + 1 for s in seeds] for p in points}
    n_runs = len(paths)
    echo(f"sweep: {len(points)} point(s) × {opts.seeds} seed(s) = {n_runs} run(s) of {opts.steps} steps "
         f"in {out}")
    todo = [p for p in points if any(remaining[p.name])]
    wall0 = time.monotonic()
    manifest = _Manifest(out, request, points, routes, paths, state, opts)
    interrupted = False
    new_steps = 0
    if todo:
        from .sweep_cluster import dask_client, default_workers, worker_threads

        parallel_guess = opts.workers or default_workers()
        if opts.scheduler is None:  # refuse before any start-up cost
            check_costs(points, routes, remaining, parallel_guess, opts, echo)
        # exact NEGF in the workers needs processes (GIL); ONNX Runtime and --server calls release it
        processes = any(r.kind == "negf" and any(remaining[p.name])
                        for p, r in zip(points, routes, strict=True))
        with dask_client(opts.scheduler, n_workers=opts.workers, echo=echo, processes=processes) as client:
            parallel = worker_threads(client)
            if opts.scheduler is not None:
                check_costs(points, routes, remaining, parallel, opts, echo)
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # before touching anything (taken at the start when the folder existed)
            _remove_stale_temporaries(out)
            manifest.write()
            returned = False  # every task returned: its runs' states are in the manifest already
            try:
                new_steps = _execute(client, opts, points, routes, paths, state, remaining, parallel,
                                     manifest, echo)
                returned = True
            except KeyboardInterrupt as exc:
                interrupted = True
                exc.report = _report(out, points, state, n_runs, new_steps, wall0, [], [], True)
                raise
            finally:
                if not returned:
                    manifest.state_from_disk()
                manifest.write()
        _remove_stale_temporaries(out)
    else:
        echo("every run is complete; rewriting the summary")
    written, found = _write_summary(out, points, paths, opts, echo)
    manifest.write()
    return _report(out, points, manifest.state, n_runs, new_steps, wall0, written, found, interrupted)


def _report(out: Path, points: list[GridPoint], state: dict[str, tuple[int, bool]], n_runs: int,
            new_steps: int, wall0: float, written: list[Path], found: list[dict],
            interrupted: bool) -> SweepReport:
    return SweepReport(out=out, points=len(points), runs_total=n_runs,
                       runs_complete=sum(1 for _, c in state.values() if c), replica_steps=new_steps,
                       wall_s=time.monotonic() - wall0, written=written, thresholds=found,
                       interrupted=interrupted)


def _execute(client: Any, opts: SweepOptions, points: list[GridPoint], routes: list[PointRoute],
             paths: dict, state: dict, remaining: dict, parallel: int, manifest: _Manifest,
             echo: Echo) -> int:
    """Submit the chunks, follow them (one progress bar), record what finished. Returns new steps."""
    from .sweep_cluster import TaskChannel
    from .sweep_task import run_chunk

    channel = TaskChannel(client, Path(opts.out) / ".stop", prefix="neqforce-sweep")
    tag = uuid.uuid4().hex[:8]
    specs = []
    for p, r in zip(points, routes, strict=True):
        todo = [s for s, left in zip(seed_list(opts), remaining[p.name], strict=True) if left]
        force = ForceSpec(kind=r.kind, model=r.model_path, server=opts.server, backend=opts.backend,
                          token=opts.token, tls_ca=opts.tls_ca, timeout=opts.timeout)
        for part in _chunks(todo, chunk_size(opts, r, len(points), parallel)):
            specs.append(ChunkSpec(
                key=f"{p.name}/seeds{part[0]}-{part[-1]}", point=p.name, params=p.params, seeds=tuple(part),
                paths=tuple(str(paths[p.name, s]) for s in part), n_steps=opts.steps, forces=force,
                dt=opts.dt, save_every=opts.save_every, checkpoint_every=opts.checkpoint_every,
                extra={"sweep": str(opts.out), "sweep_point": p.name},
                progress=channel.topic, stop=channel.stop_file))
    total = len(paths) * (opts.steps + 1)
    done = {k: v[0] + 1 if not v[1] else opts.steps + 1 for k, v in state.items()}
    base = sum(done.values())
    bar = _bar(total, base, opts.progress)
    say = (lambda s: bar.write(s)) if bar is not None else echo
    say(f"{len(specs)} task(s) ({sum(len(s.seeds) for s in specs)} runs still to do) on {parallel} worker "
        f"thread(s); writing trajectories from the workers")
    futures = {client.submit(run_chunk, spec, key=f"neqforce-sweep-{tag}-{i}", pure=False): spec
               for i, spec in enumerate(specs)}
    pending = set(futures)
    finished_runs = sum(1 for v in state.values() if v[1])

    def update() -> None:
        for msg in channel.drain():
            for path, last in msg.get("runs", {}).items():
                done[path] = max(done.get(path, 0), int(last) + 1)
        if bar is not None:
            bar.n = min(total, sum(done.values()))
            bar.set_postfix_str(f"runs {finished_runs}/{len(paths)}", refresh=False)
            bar.refresh()

    try:
        while pending:
            finished = {f for f in pending if f.done()}
            pending -= finished
            if not finished:
                time.sleep(0.05)  # polls a few futures: the sweep ends at most 50 ms after its last task
            for fut in finished:
                spec = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:
                    raise RuntimeError(f"task {spec.key} failed: {type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())}") from None
                for run in result.runs:
                    state[run.path] = (run.last_step, run.complete)
                    done[run.path] = run.last_step + 1
                finished_runs = sum(1 for v in state.values() if v[1])
                manifest.state = state
                manifest.write()
            update()
    except KeyboardInterrupt:
        say("interrupted: asking the tasks to checkpoint and stop ...")
        channel.request_stop()
        deadline = time.monotonic() + 30
        try:
            while any(not f.done() for f in pending) and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for fut in pending:
            fut.cancel()
        if bar is not None:
            bar.close()
        raise
    finally:
        channel.close()
    if bar is not None:
        bar.close()
    return sum(done.values()) - base


def _bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="replica-step", unit_scale=True, desc="sweep",
                smoothing=0.1, dynamic_ncols=True)


class _Manifest:
    """The sweep's manifest, rewritten atomically by the client only."""

    def __init__(self, out: Path, request: dict, points: list[GridPoint], routes: list[PointRoute],
                 paths: dict, state: dict, opts: SweepOptions) -> None:
        self.out, self.request, self.points, self.routes = out, request, points, routes
        self.paths, self.state, self.opts = paths, state, opts
        self.created = _now()
        old = out / MANIFEST
        if old.exists():
            try:
                self.created = json.loads(old.read_text()).get("created", self.created)
            except (OSError, json.JSONDecodeError):
                pass

    def state_from_disk(self) -> None:
        self.state = {str(p): _run_state(p) for p in self.paths.values()}

    def write(self) -> None:
        points = []
        for p, r in zip(self.points, self.routes, strict=True):
            runs = []
            for s in seed_list(self.opts):
                path = self.paths[p.name, s]
                last, complete = self.state.get(str(path), (-1, False))
                runs.append({"seed": s, "file": str(path.relative_to(self.out)), "last_step": last,
                             "complete": complete})
            points.append({"name": p.name, "swept": dict(p.swept), "params": p.params.to_dict(),
                           "backend": r.backend, "model": r.model, "reason": r.reason,
                           "force_source": r.kind, "projection": r.projection, "runs": runs})
        n_done = sum(1 for pt in points for run in pt["runs"] if run["complete"])
        data = {"format": FORMAT, "created": self.created, "updated": _now(), "request": self.request,
                "command": resume_command(self.opts), "versions": software_versions(),
                "runs_complete": n_done, "runs_total": len(self.paths), "points": points}
        atomic_write_text(self.out / MANIFEST, json.dumps(data, indent=2, sort_keys=True))


def _write_summary(out: Path, points: list[GridPoint], paths: dict, opts: SweepOptions,
                   echo: Echo) -> tuple[list[Path], list[dict]]:
    """summary.csv, xi.csv per run, summary.json (thresholds) and the two figures."""
    from .outputs import RunOutputs, write_xi_csv
    from .sweep_summary import (
        plot_phase_diagram,
        plot_xi_families,
        summarise_point,
        summarise_run,
        thresholds,
        write_summary_csv,
    )

    summaries = []
    for p in points:
        runs = []
        for s in seed_list(opts):
            path = paths[p.name, s]
            if not path.exists():
                continue
            traj = read_trajectory(path)
            if traj.last_step < 0:
                continue
            write_xi_csv(RunOutputs.at(path.parent).xi_csv, traj)
            runs.append(summarise_run(p.name, dict(p.swept), traj))
        summaries.append(summarise_point(p.name, dict(p.swept), runs))
    summaries = [s for s in summaries if s.runs]
    written: list[Path] = []
    if not summaries:
        return written, []
    written.append(write_summary_csv(out / "summary.csv", summaries))
    found = thresholds(summaries)
    table = [{"point": s.point, **s.swept, "runs": len(s.runs), "nucleated": s.nucleated,
              "switched": s.switched, **{f"{k}_mean": _finite(v) for k, v in s.mean.items()},
              **{f"{k}_sem": _finite(v) for k, v in s.sem.items()}} for s in summaries]
    atomic_write_text(out / "summary.json", json.dumps(
        {"thresholds": [{**t, "value": _finite(t["value"])} for t in found], "points": table}, indent=2))
    written.append(out / "summary.json")
    if opts.plots:
        written.append(plot_phase_diagram(out / "phase_diagram.png", summaries))
        written.append(plot_xi_families(out / "xi_families.png", summaries))
    return written, found


def _finite(x: float) -> float | None:
    return float(x) if isinstance(x, float | int | np.floating) and math.isfinite(x) else None
