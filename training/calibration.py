"""Calibration of a committee's spread threshold on validation frames (metadata ``neqforce.committee``).

A committee (an ensemble of 2+ members exported together) predicts, per site, the mean force and the
spread σ_i: the std over members of their forces (ddof 0, force units), its variance averaged over the site
and its nearest same-sublattice sites (``model.local_spread``). The spread is useful only if a large
σ_i means a large error; the threshold turns it into a decision the server can make per request.

Method (on the **validation** frames of the members' training trajectories, the blocks held out for early
stopping; never the test or the frozen held-out set). The server decides per request on its largest
per-site spread ``force_std_max`` = max_i σ_i, so the threshold is calibrated on that same statistic:

1. per validation frame f: s_f = max_i σ_i and its force RMSE e_f = sqrt(mean_i (F_model − F_NEGF)²);
2. sort the frames by s_f into ``bins`` equal-count bins; RMS of e_f in each bin;
3. threshold τ = the lower s_f-edge of the first bin (from low s_f) whose RMS exceeds ``target_rmse``:
   above τ a lattice is, on average, worse than the accuracy target. When no bin exceeds the target,
   τ = the largest s_f seen in validation (beyond it the committee has left the validated data).

The per-site table (sites binned by σ_i, error |ΔF_i|, the lower σ-edge where the per-site RMSE exceeds the
target: ``site_spread_threshold``) and the Spearman rank correlations of σ_i with |ΔF_i| (sites) and of s_f
with e_f (frames) are stored with it; ``neqforce evaluate`` measures the same on held-out frames. (A
per-site threshold compared with a lattice's *largest* σ_i would send nearly every lattice to NEGF: of 840
sites some always lie in the top per-site bin.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

#: Committee spread definition (metadata ``neqforce.committee`` → ``spread``).
SPREAD_DEFINITION = ("per-site committee spread: sqrt of the members' force variance (ddof 0) averaged over "
                     "the site and its 8 nearest same-sublattice sites inside the device ((±1,±1), (±2,0), "
                     "(0,±2); y periodic), force units")
#: The spread of one network distilled from a committee (``neqforce train --teacher``).
DISTILLED_SPREAD_DEFINITION = (
    "distilled committee spread: the teacher committee's per-site std of the electronic force (ddof 0) as "
    "predicted by a head of this one network (trained on the teacher's std over every training frame), "
    "its square averaged over the site and its 8 nearest same-sublattice sites inside the device as a "
    "committee's ((±1,±1), (±2,0), (0,±2); y periodic), force units")
#: Default accuracy target: RMSE of the force equal to the issue's MSE target 3e-4 in the paper's
#: normalized metric, with the fixed normalization F_norm = 1.494: sqrt(3e-4) * 1.494.
F_NORM = 1.494
TARGET_RMSE_FORCE = float(np.sqrt(3e-4) * F_NORM)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D samples (NaN when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _binned(spread: np.ndarray, error: np.ndarray, target_rmse: float, bins: int,
            what: str) -> tuple[np.ndarray, np.ndarray, list[list[float]], float | None]:
    """Sort the samples by spread into ``bins`` equal-count bins: (sorted spreads, sorted errors, table of
    [lowest spread, highest spread, RMS error] per bin, lower spread edge of the first bin whose RMS error
    exceeds ``target_rmse`` or None)."""
    s, e = np.ravel(np.asarray(spread, np.float64)), np.ravel(np.asarray(error, np.float64))
    if s.size == 0 or s.size != e.size:
        raise ValueError(f"calibration needs as many {what} (and at least one)")
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    edges = np.linspace(0, s.size, min(bins, s.size) + 1).astype(int)
    table, threshold = [], None
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        rms = float(np.sqrt(np.mean(e[lo:hi] ** 2)))
        table.append([float(s[lo]), float(s[hi - 1]), rms])
        if threshold is None and rms > target_rmse:
            threshold = float(s[lo])
    return s, e, table, threshold


def spread_threshold(spread: np.ndarray, error: np.ndarray, target_rmse: float = TARGET_RMSE_FORCE,
                     bins: int = 20) -> dict:
    """The per-site calibration record (module docstring) for per-site ``spread`` and absolute ``error``."""
    s, e, table, threshold = _binned(spread, error, target_rmse, bins, "spreads as errors")
    exceeded = threshold is not None
    rule = ("lower spread edge of the first equal-count bin whose error RMSE exceeds the target" if exceeded
            else "no bin exceeds the target: largest validation spread")
    return {"spread_threshold": threshold if exceeded else float(s[-1]), "threshold_rule": rule,
            "target_rmse_force": float(target_rmse), "bins": table, "spearman_sites": spearman(s, e),
            "n_sites": int(s.size), "spread": SPREAD_DEFINITION}


def calibrate_committee(model, ck: dict, data: str | os.PathLike[str] | Sequence[str],
                        target_rmse: float = TARGET_RMSE_FORCE, bins: int = 20) -> dict:
    """:func:`spread_threshold` of an :class:`~neqforce.training.model.EnsembleForceModel` on the
    validation frames of the training trajectories ``ck['train_ids']`` found in ``data``."""
    import torch

    def predict(q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            qt, vt = torch.from_numpy(q), torch.from_numpy(v)
            return model(qt, vt)[0].numpy(), model.spread(qt, vt).numpy()

    return calibrate_predictions(predict, ck.get("train_ids") or [], data, target_rmse, bins)


def calibrate_predictions(predict, train_ids: Sequence[str], data: str | os.PathLike[str] | Sequence[str],
                          target_rmse: float = TARGET_RMSE_FORCE, bins: int = 20) -> dict:
    """The calibration record of a committee given as ``predict(q, voltage) -> (force, spread)`` (numpy,
    (B, lx, ly)), on the validation frames of the training trajectories ``train_ids`` found in ``data``
    (the blocks training held out for early stopping): a torch committee or an ONNX graph alike."""
    from .data import frame_groups, qualify_ids, training_validation_mask, traj_id
    from .dataset import load_dataset

    train_ids = set(train_ids)
    trajs = [t for t in qualify_ids(load_dataset(data)) if traj_id(t) in train_ids]
    if not trajs:
        raise ValueError("calibration data holds none of the model's training trajectories "
                         f"({', '.join(sorted(train_ids)[:4])} …): give the dataset the model was trained on")
    spreads, errors, frame_max, frame_rmse, n_frames = [], [], [], [], 0
    for fr in frame_groups(trajs):
        fr = fr.subset(training_validation_mask(fr.step))  # as training does
        n_frames += len(fr)
        for i in range(0, len(fr), 64):
            force, spread = predict(fr.q[i:i + 64], fr.voltage[i:i + 64])
            force, spread = np.asarray(force, np.float64), np.asarray(spread, np.float64)
            err = np.abs(force - fr.force[i:i + 64])
            spreads.append(spread.ravel())
            errors.append(err.ravel())
            frame_max.append(spread.reshape(len(spread), -1).max(axis=1))
            frame_rmse.append(np.sqrt(np.mean(err.reshape(len(err), -1) ** 2, axis=1)))
    sites = spread_threshold(np.concatenate(spreads), np.concatenate(errors), target_rmse, bins)
    record = frame_spread_threshold(np.concatenate(frame_max), np.concatenate(frame_rmse), target_rmse)
    record.update(site_spread_threshold=sites["spread_threshold"],
                  site_threshold_rule=sites["threshold_rule"], bins=sites["bins"],
                  spearman_sites=sites["spearman_sites"], n_sites=sites["n_sites"])
    record["basis"] = f"validation frames ({n_frames}) of the training trajectories"
    return record


def frame_spread_threshold(frame_max_spread: np.ndarray, frame_rmse: np.ndarray,
                           target_rmse: float = TARGET_RMSE_FORCE, bins: int = 10) -> dict:
    """The request-level record of the module docstring: per frame its largest per-site spread s_f and
    its force RMSE e_f; ``spread_threshold`` is compared with a request's ``force_std_max``."""
    s, e, table, threshold = _binned(frame_max_spread, frame_rmse, target_rmse, bins,
                                     "frame spreads as frame errors")
    exceeded = threshold is not None
    rule = ("frames: lower edge (largest per-site spread) of the first equal-count bin whose force RMSE "
            "exceeds the target" if exceeded else
            "frames: no bin exceeds the target: largest per-site spread of any validation frame")
    return {"spread_threshold": threshold if exceeded else float(s[-1]), "threshold_rule": rule,
            "target_rmse_force": float(target_rmse), "frame_bins": table, "spearman_frames": spearman(s, e),
            "n_frames": int(s.size),
            "spread": "threshold on force_std_max, the largest per-site committee spread in a lattice "
                      "(force units); per-site: " + SPREAD_DEFINITION}
