"""How local is the exact force in real dynamics frames? The response of the exact electronic force at one
column to a perturbation of every column farther than d from it (docs/nonlocality.md §5).

    python bench/locality_response.py data/vrange data/vhigh --out runs/locality.json
    python bench/locality_response.py data/vrange --voltages 3.0 --frames 1 --distances 8 --out /tmp/x.json
    python bench/locality_response.py data/vrange data/vhigh --voltages 3.5 --distances 8,12 --sigmas 0.3 \
        --noise iid,column,staggered,permute --targets 2,5 --out runs/locality_kinds.json

Frames: validation-block frames (never trained on) of 30×28 NEGF-BD trajectories at each voltage whose
metallic domain is connected to the left electrode and has 6 to lx − 12 columns, evenly spaced over the
candidates. In each, three target columns: 4 columns inside the metal (wall − 4), and 3 and 6 columns
into the CDW ahead of the wall (wall + 2, wall + 5; the wall column is the first CDW column). For a
target column x0 and a distance d, Gaussian noise of standard deviation σ is added to every site with
|x − x0| > d (the same y-rows: whole columns), and the exact electronic force g(n_i − ½) of column x0 is
recomputed (NEGF, one BLAS thread). Printed: the RMS change of that force over the column's sites and
the draws, in the paper's metric (F / 1.494), next to the model's own error on the unperturbed column and
the model's change under the same perturbation (zero for a purely local model once d ≥ r_c; its global
inputs can still move). A descriptor of radius r_c cannot know what lies beyond r_c: where the exact
response at d = r_c is comparable to the model's error, more data or width cannot remove that error.

``--noise`` picks what the far columns get (per-site RMS σ for the first three, so they compare):
``iid`` independent N(0, σ²) per site (the default); ``column`` one N(0, σ²) shift per column (k_y = 0:
moves the column mean of Q only); ``staggered`` one N(0, σ²) amplitude per column times (-1)^(x+y) (moves
the column's CDW order only); ``permute`` each far column's even rows shuffled among themselves and its
odd rows likewise (no σ: every column mean of Q and of the staggered Q kept exactly, the configuration
detail along y rearranged). A response to ``permute`` or ``iid`` far above ``column`` + ``staggered`` is
configuration detail that column means cannot carry (the long-range channel of model 0.5 sees column
statistics only).

Results are cached per (frame, column, d, σ, draw) in the ``--out`` JSON (atomic writes, resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from neqforce.atomic import atomic_write_text
from neqforce.physics import HolsteinParams, elastic_force, electron_density, electronic_force
from neqforce.physics.domain_wall import bulk_cdw_amplitude, metallic_columns
from neqforce.training.data import validation_mask
from neqforce.training.dataset import load_dataset
from neqforce.training.evaluate import load_any
from neqforce.trajectory import Trajectory

F_NORM = 1.494
TARGETS = (("metal, wall − 4", -4), ("CDW, wall + 2", 2), ("CDW, wall + 5", 5))
NOISES = ("iid", "column", "staggered", "permute")


def far_perturbation(q: np.ndarray, far: np.ndarray, sigma: float, noise: str,
                     rng: np.random.Generator) -> np.ndarray:
    """``q`` with the columns where ``far`` is set perturbed by ``noise`` (module docstring)."""
    lx, ly = q.shape
    if noise == "iid":
        return q + np.where(far[:, None], sigma * rng.standard_normal(q.shape), 0.0)
    if noise in ("column", "staggered"):
        shift = sigma * rng.standard_normal((lx, 1))
        if noise == "staggered":
            shift = shift * (1 - 2 * ((np.arange(lx)[:, None] + np.arange(ly)[None, :]) % 2))
        return q + np.where(far[:, None], shift, 0.0)
    if noise == "permute":
        out = q.copy()
        for parity in (0, 1):  # a shuffle within each sublattice row set, independently per column
            rows = np.arange(parity, ly, 2)
            keys = rng.random((lx, rows.size)).argsort(axis=1)
            out[:, rows] = np.where(far[:, None], np.take_along_axis(q[:, rows], keys, axis=1), q[:, rows])
        return out
    raise ValueError(f"unknown noise {noise!r} (known: {', '.join(NOISES)})")


def pick_frames(trajs: list[Trajectory], voltage: float,
                count: int) -> list[tuple[Trajectory, int, np.ndarray, int]]:
    """(trajectory, step, Q, wall column) of ``count`` validation frames at ``voltage`` with a left domain."""
    cands = []
    for traj in trajs:
        if abs(traj.params.voltage - voltage) > 1e-9:
            continue
        fr = traj.frames()
        q0 = bulk_cdw_amplitude(traj.params)
        for k in np.flatnonzero(validation_mask(fr["step"])):
            metal = metallic_columns(fr["q"][k], q0)
            lx = metal.size
            wall = int(np.argmin(metal)) if not metal.all() else lx  # first CDW column
            if 6 <= wall <= lx - 12 and not metal[wall:].any():
                cands.append((traj, int(fr["step"][k]), fr["q"][k], wall))
    if not cands:
        return []
    idx = np.unique(np.linspace(0, len(cands) - 1, count).round().astype(int))
    return [cands[i] for i in idx]


def exact_column(q: np.ndarray, params: HolsteinParams, x0: int | slice) -> np.ndarray:
    """Exact electronic force g(n_i − ½) of column(s) ``x0`` (NEGF, one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return electronic_force(electron_density(q, params), params)[x0]


def main(argv: list[str] | None = None) -> int:
    from neqforce.models import bundled_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--voltages", default="3.0,3.5")
    ap.add_argument("--frames", type=int, default=3, help="frames per voltage")
    ap.add_argument("--distances", default="4,6,8,10,12")
    ap.add_argument("--sigmas", default="0.1,0.3", help="perturbation amplitudes (thermal: sqrt(T/k) ~ 0.32)")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--noise", default="iid", help=f"far perturbations, comma-separated: {', '.join(NOISES)}")
    ap.add_argument("--targets", default="-4,2,5", help="target columns relative to the wall")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled one)")
    ap.add_argument("--out", type=Path, required=True, help="JSON cache of exact forces (resumable)")
    args = ap.parse_args(argv)
    model_path = args.model or bundled_model_path()
    try:
        trajs, model = load_dataset(args.data), load_any(model_path, threads=1)
    except ValueError as exc:  # a missing model or dataset, a model without neqforce metadata
        raise SystemExit(f"error: {exc}") from None
    distances = [int(d) for d in args.distances.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    noises = args.noise.split(",")
    if unknown := [n for n in noises if n not in NOISES]:
        raise SystemExit(f"error: unknown noise {unknown[0]!r} (known: {', '.join(NOISES)})")
    known = {off for _, off in TARGETS}
    try:
        wanted = {int(t) for t in args.targets.split(",")}
    except ValueError:
        raise SystemExit(f"error: --targets takes integers, got {args.targets!r}") from None
    if wanted - known:
        raise SystemExit(f"error: --targets {sorted(wanted - known)}: no such target "
                         f"(known offsets from the wall: {sorted(known)})")
    targets = [(name, off) for name, off in TARGETS if off in wanted]
    cache: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def model_force(q: np.ndarray, v: float) -> np.ndarray:
        return model.predict(q[None], np.array([v]))[0]

    print(f"model {model_path.name}; RMS change of the force at the target column "
          f"(F / {F_NORM}) when every column farther than d is perturbed by N(0, σ²)")
    for v in (float(x) for x in args.voltages.split(",")):
        frames = pick_frames(trajs, v, args.frames)
        if not frames:
            print(f"V = {v:g}: no frame with a left metallic domain in the validation blocks")
            continue
        rows: dict[tuple[str, float], dict] = {}
        for fi, (traj, step, q, wall) in enumerate(frames):
            params, name_of_file = traj.params, Path(traj.extra["file"]).name
            base_key = f"{name_of_file}:{step}:base"
            if base_key not in cache:
                cache[base_key] = exact_column(q, params, slice(None)).tolist()
                atomic_write_text(args.out, json.dumps(cache))
            exact0 = np.asarray(cache[base_key])
            model_el0 = model_force(q, v) - elastic_force(q, params)  # the model's electronic force
            x = np.arange(q.shape[0])
            for name, off in targets:
                x0 = wall + off
                if not 0 <= x0 < q.shape[0]:
                    continue
                err = float(np.sqrt(np.mean((model_el0[x0] - exact0[x0]) ** 2)) / F_NORM)
                for sigma, noise in ((s, n) for n in noises for s in (sigmas if n != "permute" else [0.0])):
                    row = rows.setdefault((name, sigma, noise), {"err": [], **{d: [] for d in distances},
                                                                 **{f"m{d}": [] for d in distances}})
                    row["err"].append(err)
                    for d in distances:
                        far = np.abs(x - x0) > d
                        for k in range(args.draws):
                            seed = [fi, x0, d, int(sigma * 1000), k, int(v * 1000)]
                            key = f"{name_of_file}:{step}:{x0}:{d}:{sigma}:{k}"
                            if noise != "iid":  # iid keeps §5's seeds and cache keys
                                seed, key = seed + [NOISES.index(noise)], f"{key}:{noise}"
                            qp = far_perturbation(q, far, sigma, noise, np.random.default_rng(seed))
                            if key not in cache:
                                cache[key] = exact_column(qp, params, x0).tolist()
                                atomic_write_text(args.out, json.dumps(cache))
                            row[d].append((np.asarray(cache[key]) - exact0[x0]) / F_NORM)
                            mp = model_force(qp, v) - elastic_force(qp, params)
                            row[f"m{d}"].append((mp[x0] - model_el0[x0]) / F_NORM)
        print(f"V = {v:g}: {len(frames)} frames (walls at columns "
              f"{', '.join(str(w) for *_, w in frames)})")
        head = "".join(f"{'d=' + str(d):>9s}" for d in distances)
        print(f"  {'target':16s}{'noise':>10s}{'σ':>5s}{'model err':>11s}{head}   model change at the same d")
        for (name, sigma, noise), row in rows.items():
            exact = "".join(f"{np.sqrt(np.mean(np.square(row[d]))):9.4f}" for d in distances)
            changes = " ".join(f"{np.sqrt(np.mean(np.square(row[f'm{d}']))):.4f}" for d in distances)
            err_rms = np.sqrt(np.mean(np.square(row["err"])))
            print(f"  {name:16s}{noise:>10s}{sigma:5.2f}{err_rms:11.4f}{exact}   {changes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
