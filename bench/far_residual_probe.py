"""How much of a model's force error could a channel that sees single far sites remove?

A linear probe (docs/nonlocality.md §8): the residual r_i = F_exact,i − F_model,i of a voltage model on
30×28 NEGF-BD frames, made sublattice-invariant (t_i = s_i r_i, s_i = (−1)^(x+y)), is regressed on the
far configuration only — u_j = s_j Q_j minus its column mean (the model already sees column means
through its long-range channel), at offsets near < |dx| ≤ far columns, every row dy (symmetrised
dy ↔ −dy: the probe is mirror-symmetric and translation-invariant in y like the model) — with one kernel
per class of the site's position relative to the domain wall (signed distance x − W, W = metallic
columns, SPEC §5). Fitted by ridge least squares on ``--fit`` frames, the ridge chosen on ``--select``
frames, judged once on ``--test`` frames: the fraction of the residual MSE it removes on the test
frames is an estimate (linear, translation-invariant kernels: a lower bound) of what a learned far-site
channel could buy. Nothing here trains or changes the model.

    python bench/far_residual_probe.py --fit data/heldout --select data/heldout2 --test data/heldout3 \\
        --voltages 3.0,3.5,4.0
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, staggered_sign
from neqforce.physics.domain_wall import metallic_columns

F_NORM = 1.494  # the fixed normalization of the paper's metric (docs/ml_model.md, "Metrics")
#: Signed distance x − W of a site's column to the wall: class edges (columns).
EDGES = (-12, -6, -2, 3, 7, 13)
RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, float("inf"))  # inf: no probe


def frames_of(folders: list[str], voltage: float) -> tuple[np.ndarray, np.ndarray]:
    """(Q, F) of every frame at ``voltage`` in the trajectory files of ``folders``, float64."""
    from neqforce.trajectory import read_trajectory

    qs, fs = [], []
    for folder in folders:
        for path in sorted(glob.glob(str(Path(folder) / "**" / "*.h5"), recursive=True)):
            try:
                traj = read_trajectory(path)
            except Exception:  # noqa: BLE001 - not a trajectory (e.g. a manifest's sidecar)
                continue
            if abs(traj.params.voltage - voltage) > 1e-9 or traj.params.shape != (30, 28):
                continue
            fr = traj.frames()
            qs.append(fr["q"])
            fs.append(fr["force"])
    if not qs:
        raise SystemExit(f"error: no 30x28 frames at V = {voltage} in {', '.join(folders)}")
    return np.concatenate(qs).astype(np.float64), np.concatenate(fs).astype(np.float64)


def far_features(q: np.ndarray, near: int, far: int) -> np.ndarray:
    """(n, lx, ly, K) symmetrised far-site inputs u at offsets near < |dx| <= far, dy = 0 … ly//2."""
    n, lx, ly = q.shape
    s = staggered_sign(lx, ly)
    u = s * q
    u = u - u.mean(axis=2, keepdims=True)
    pad = np.zeros((n, lx + 2 * far, ly))
    pad[:, far:far + lx] = u
    dxs = [dx for dx in range(-far, far + 1) if abs(dx) > near]
    dys = range(ly // 2 + 1)
    out = np.empty((n, lx, ly, len(dxs) * len(dys)), dtype=np.float32)
    k = 0
    for dx in dxs:
        shifted = pad[:, far + dx:far + dx + lx]  # u[x + dx, y]
        for dy in dys:
            plus = np.roll(shifted, -dy, axis=2)  # u[x + dx, y + dy]
            minus = np.roll(shifted, dy, axis=2)
            out[..., k] = 0.5 * (plus + minus)
            k += 1
    return out


def site_classes(q: np.ndarray, params: HolsteinParams) -> np.ndarray:
    """(n, lx, ly) class index: bins of x − W (EDGES), W = number of metallic columns of the frame."""
    n, lx, ly = q.shape
    w = metallic_columns(q, bulk_cdw_amplitude(params)).sum(axis=1)  # (n,)
    d = np.arange(lx)[None, :] - w[:, None]
    cls = np.digitize(d, EDGES)
    return np.broadcast_to(cls[:, :, None], (n, lx, ly))


def residual(model, q: np.ndarray, f: np.ndarray, voltage: float, batch: int = 64) -> np.ndarray:
    """Sublattice-invariant residual t = s (F_exact − F_model), (n, lx, ly), force units."""
    pred = np.concatenate([model.run(q[i:i + batch], want_density=False, params={"voltage": voltage})[0]
                           for i in range(0, len(q), batch)])
    return staggered_sign(*q.shape[1:]) * (f - pred.astype(np.float64))


def normal_equations(x: np.ndarray, t: np.ndarray, cls: np.ndarray, n_cls: int, chunk: int = 64):
    """Per class: (XᵀX, Xᵀt, count), accumulated over frames in chunks."""
    k = x.shape[-1]
    xtx = np.zeros((n_cls, k, k))
    xtt = np.zeros((n_cls, k))
    cnt = np.zeros(n_cls)
    for c in range(n_cls):
        m = cls == c
        xc, tc = x[m], t[m]
        for i in range(0, len(xc), chunk * 840):
            xtx[c] += xc[i:i + chunk * 840].T @ xc[i:i + chunk * 840]
            xtt[c] += xc[i:i + chunk * 840].T @ tc[i:i + chunk * 840]
        cnt[c] = m.sum()
    return xtx, xtt, cnt


def solve(xtx: np.ndarray, xtt: np.ndarray, cnt: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge solution per class; ``ridge`` = inf gives zero weights (no correction)."""
    k = xtx.shape[-1]
    if not np.isfinite(ridge):
        return np.zeros_like(xtt)
    return np.stack([np.linalg.solve(xtx[c] + ridge * max(cnt[c], 1.0) / 840.0 * np.eye(k), xtt[c])
                     for c in range(len(cnt))])


def predict(w: np.ndarray, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
    return np.einsum("...k,...k->...", x, w[cls])


def mse(a: np.ndarray) -> float:
    return float(np.mean((a / F_NORM) ** 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "neqforce" / "models"
                                           / "voltage.onnx"))
    ap.add_argument("--fit", nargs="+", required=True, help="folders of 30x28 NEGF-BD trajectories")
    ap.add_argument("--select", nargs="+", required=True, help="folders: choose the ridge here")
    ap.add_argument("--test", nargs="+", required=True, help="folders: judged once, here")
    ap.add_argument("--voltages", default="3.0,3.5,4.0")
    ap.add_argument("--near", type=int, default=8, help="exclude |dx| <= near (the model's cutoff)")
    ap.add_argument("--far", type=int, default=20, help="include |dx| <= far")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        voltages = [float(v) for v in args.voltages.split(",")]
    except ValueError:
        print(f"error: --voltages must be numbers separated by commas, got {args.voltages!r}",
              file=sys.stderr)
        return 1
    if not 0 <= args.near < args.far:
        print("error: need 0 <= --near < --far", file=sys.stderr)
        return 1
    from neqforce.server.backends.onnx import OnnxModel

    model = OnnxModel.load(args.model, "probe", threads=1)
    n_cls = len(EDGES) + 1
    rows = []
    print(f"# far-residual probe: {Path(args.model).name}, far sites {args.near} < |dx| <= {args.far}, "
          f"{n_cls} wall-distance classes; MSE in (F/{F_NORM})^2")
    print(f"{'V':>5} {'test MSE':>10} {'after probe':>12} {'removed':>8} {'ridge':>7} {'fit, in-sample':>14} "
          f"{'fit frames':>10} {'test frames':>11}  per class: removed fraction (sites)")
    for v in voltages:
        t0 = time.perf_counter()
        params = HolsteinParams(voltage=v)
        sets = {}
        for name, folders in (("fit", args.fit), ("select", args.select), ("test", args.test)):
            q, f = frames_of(folders, v)
            sets[name] = (far_features(q, args.near, args.far),
                          residual(model, q, f, v), site_classes(q, params))
        xtx, xtt, cnt = normal_equations(*sets["fit"], n_cls)
        xs, ts, cs = sets["select"]
        scores = {r: mse(ts - predict(solve(xtx, xtt, cnt, r), xs, cs)) for r in RIDGES}
        ridge = min(scores, key=scores.get)
        w = solve(xtx, xtt, cnt, ridge)
        xf, tf, cf = sets["fit"]
        in_sample = 1.0 - mse(tf - predict(solve(xtx, xtt, cnt, RIDGES[0]), xf, cf)) / mse(tf)
        xt, tt, ct = sets["test"]
        after = tt - predict(w, xt, ct)
        per_class = []
        for c in range(n_cls):
            m = ct == c
            if m.any():
                per_class.append((c, 1.0 - mse(after[m]) / mse(tt[m]), int(m.sum())))
        row = {"voltage": v, "test_mse": mse(tt), "after": mse(after), "removed": 1.0 - mse(after) / mse(tt),
               "ridge": ridge, "select_scores": scores, "in_sample_removed": in_sample,
               "fit_frames": int(len(sets["fit"][1])),
               "test_frames": int(len(tt)), "per_class": per_class, "seconds": time.perf_counter() - t0}
        rows.append(row)
        pc = " ".join(f"{c}:{r:+.2f}({n})" for c, r, n in per_class)
        print(f"{v:5.2f} {row['test_mse']:10.3e} {row['after']:12.3e} {row['removed']:8.1%} {ridge:7.0e} "
              f"{in_sample:14.1%} "
              f"{row['fit_frames']:10d} {row['test_frames']:11d}  {pc}", flush=True)
    names = [f"<{EDGES[0]}"] + [f"[{a},{b})" for a, b in zip(EDGES[:-1], EDGES[1:], strict=True)]
    print(f"classes (x − W): {', '.join(f'{i}: {n}' for i, n in enumerate([*names, f'>={EDGES[-1]}']))}")
    if args.out:
        from neqforce.atomic import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
