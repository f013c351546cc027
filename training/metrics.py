"""The paper's force metrics (Fig. 2), overall and per region.

Forces are rescaled to [-1, 1] by F_max = max |F_NEGF| over the evaluated set; then
``mse`` = mean (F_ML - F_NEGF)² / F_max², ``sigma`` = standard deviation of δ = (F_NEGF - F_ML) / F_max.
Regions: ``bulk``, ``near_left`` (x < r_c = 6), ``near_right`` (lx-1-x < r_c), see
:func:`neqforce.training.data.region_of_column`.
"""

from __future__ import annotations

import numpy as np

from .data import REGIONS, region_of_column


def force_metrics(pred: np.ndarray, ref: np.ndarray, f_max: float | None = None) -> dict:
    """Metrics of predicted vs reference total forces, arrays (S, lx, ly); regions by column."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
    f_max = float(np.abs(ref).max()) if f_max is None else float(f_max)
    delta = (ref - pred) / f_max
    lab = np.broadcast_to(region_of_column(ref.shape[-2])[None, :, None], ref.shape)
    out: dict = {"f_max": f_max, "n_frames": int(ref.shape[0]), "lattice": list(ref.shape[1:])}
    for name, mask in [("overall", np.ones(ref.shape, bool))] + [
            (r, lab == i) for i, r in enumerate(REGIONS)]:
        d = delta[mask]
        if d.size == 0:
            continue
        out[name] = {"mse": float(np.mean(d**2)), "sigma": float(np.std(d)), "mean": float(np.mean(d)),
                     "max_abs": float(np.max(np.abs(d))), "rmse_force": float(np.sqrt(np.mean(d**2)) * f_max),
                     "n_sites": int(d.size)}
    return out


def format_metrics(m: dict) -> str:
    """A small table of the metrics (rescaled to [-1, 1] by F_max)."""
    lines = [f"F_max = {m['f_max']:.4f} over {m['n_frames']} frames of {m['lattice'][0]}x{m['lattice'][1]}",
             f"{'region':<11} {'MSE':>10} {'sigma':>8} {'mean':>9} {'max|d|':>8} {'RMSE(F)':>9} {'sites':>9}"]
    for name in ("overall", *REGIONS):
        if name in m:
            r = m[name]
            lines.append(f"{name:<11} {r['mse']:10.3e} {r['sigma']:8.4f} {r['mean']:9.1e} "
                         f"{r['max_abs']:8.4f} {r['rmse_force']:9.4f} {r['n_sites']:9d}")
    return "\n".join(lines)
