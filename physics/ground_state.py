"""The relaxed V = 0 checkerboard CDW, the initial state of every quench (docs/physics.md)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from neqforce.atomic import atomic_write

from .domain_wall import bulk_cdw_amplitude
from .forces import negf_forces
from .lattice import staggered_sign
from .params import HolsteinParams

_MEMORY: dict[str, np.ndarray] = {}
#: Called after every NEGF solve of a relaxation with (solves so far, max |F_i| now).
RelaxProgress = Callable[[int, float], None]
#: Relaxation stops when max |F_i| falls below this.
FORCE_TOL = 1e-8


#: Relaxed states shipped with the package (the defaults), named by the same key as the disk cache.
PACKAGED = Path(__file__).with_name("ground_states")


def cache_dir() -> Path:
    """Disk cache for relaxed states: $NEQFORCE_CACHE or ~/.cache/neqforce."""
    return Path(os.environ.get("NEQFORCE_CACHE", Path.home() / ".cache" / "neqforce"))


def _key(params: HolsteinParams, seed: int) -> str:
    text = json.dumps({**params.replace(voltage=0.0).to_dict(), "seed": seed, "tol": FORCE_TOL},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def relax(q_init: np.ndarray, params: HolsteinParams, tol: float = FORCE_TOL, max_iter: int = 1000,
          step: float = 0.8, progress: RelaxProgress | None = None) -> np.ndarray:
    """Solve F(Q) = 0 with NEGF forces by steepest descent Q <- Q + step F (step halves on overshoot).

    At V = 0 the force is the gradient of the electronic free energy plus E_lat, so this is a
    gradient flow; starting next to the bulk amplitude it converges in ~100 NEGF calls.
    """
    q = np.array(q_init, dtype=np.float64)
    force = negf_forces(q, params)[0]
    err = float(np.max(np.abs(force)))
    if progress is not None:
        progress(1, err)
    for solves in range(2, max_iter + 2):
        if err < tol:
            return q
        trial = q + step * force
        trial_force = negf_forces(trial, params)[0]
        trial_err = float(np.max(np.abs(trial_force)))
        if progress is not None:
            progress(solves, trial_err)
        if trial_err > 2.0 * err and step > 1e-3:
            step *= 0.5
            continue
        q, force, err = trial, trial_force, trial_err
    raise RuntimeError(
        f"CDW relaxation did not reach max|F| < {tol} in {max_iter} iterations (now {err:.2e})")


def packaged_key(params: HolsteinParams, seed: int = 0) -> str:
    """File stem under which the relaxed state of ``params`` is cached/packaged."""
    return _key(params, seed)


def cache_path(params: HolsteinParams, seed: int = 0) -> Path:
    """Where :func:`cdw_ground_state` keeps the relaxed state of ``params`` (the voltage is ignored)."""
    return cache_dir() / "ground_state" / f"{_key(params, seed)}.npy"


def is_packaged(params: HolsteinParams, seed: int = 0) -> bool:
    """True when the relaxed state of ``params`` ships with the package (``physics/ground_states/``)."""
    return (PACKAGED / f"{_key(params, seed)}.npy").exists()


def is_cached(params: HolsteinParams, seed: int = 0) -> bool:
    """True when :func:`cdw_ground_state` will not need to relax (memory, packaged or disk cache)."""
    key = _key(params, seed)
    return key in _MEMORY or (PACKAGED / f"{key}.npy").exists() or cache_path(params, seed).exists()


#: Devices longer than this many columns start their relaxation from a spliced guess (:func:`spliced_guess`).
SPLICE_LX = 40
#: Length of the shorter device whose relaxed edges are spliced in (its edge halves, SPLICE_BASE // 2 each).
SPLICE_BASE = 30


def spliced_guess(base: np.ndarray, lx: int) -> np.ndarray:
    """Initial guess of the relaxed CDW of an ``lx``-column device from the relaxed state ``base`` of a
    shorter one (same ly and parameters): its left and right halves at the electrodes, the ideal
    checkerboard ±q0 in between (q0 = the base's amplitude at its centre column).

    The CDW gap screens each electrode within a few columns (docs/nonlocality.md §2), so the edge profiles
    of a long device are those of the short one up to ~1e-4, and the relaxation from this guess needs a
    third of the NEGF solves of one from the noisy checkerboard (22 vs 75 at 40×10). A right half shifted
    by an odd number of columns is taken with the opposite sign: at V = 0 the half-filled bipartite
    lattice is particle-hole symmetric, F(−Q) = −F(Q).
    """
    bx, ly = base.shape
    if lx < bx:
        raise ValueError(f"cannot splice a {bx}-column state into {lx} columns")
    half = bx // 2
    sign = staggered_sign(lx, ly)
    q0 = float(np.mean(np.abs(base[half])))
    guess = sign * q0
    guess[:half] = base[:half]
    shift = lx - bx
    guess[lx - (bx - half):] = base[half:] * (-1.0) ** shift
    return guess


def _relax_from_checkerboard(params: HolsteinParams, seed: int,
                             progress: RelaxProgress | None = None) -> np.ndarray:
    """The relaxed V = 0 state: from Q = (−1)^(x+y) q0 plus 1e-3 noise from ``seed``, or, for devices longer
    than SPLICE_LX columns, from the spliced edges of the relaxed SPLICE_BASE-column state of the same
    seed (:func:`spliced_guess`; same fixed point, to the relaxation tolerance)."""
    p0 = params.replace(voltage=0.0)
    if p0.lx > SPLICE_LX:
        base = cdw_ground_state(p0.replace(lx=SPLICE_BASE), seed)
        return relax(spliced_guess(base, p0.lx), p0, progress=progress)
    rng = np.random.default_rng(seed)
    q_init = staggered_sign(p0.lx, p0.ly) * bulk_cdw_amplitude(p0) + 1e-3 * rng.standard_normal(p0.shape)
    return relax(q_init, p0, progress=progress)


def cdw_ground_state(params: HolsteinParams, seed: int = 0, use_cache: bool = True,
                     progress: RelaxProgress | None = None) -> np.ndarray:
    """Relaxed V = 0 checkerboard CDW Q, shape (lx, ly); the voltage of ``params`` is ignored.

    Starts from Q = (-1)^(x+y) q0_bulk (positive at (0, 0)) plus 1e-3 Gaussian noise from ``seed``
    and relaxes to max |F| < 1e-8 with exact NEGF forces (``progress(solves, max|F|)`` after each
    solve). Cached in memory and on disk (:func:`cache_path`), keyed by the parameters and the seed;
    the default 30×28 state ships with the package (``physics/ground_states/``, regenerate with
    ``use_cache=False``).
    """
    key = _key(params, seed)
    if not use_cache:
        return _relax_from_checkerboard(params, seed, progress)
    if key in _MEMORY:
        return _MEMORY[key].copy()
    path = cache_path(params, seed)
    for candidate in (PACKAGED / f"{key}.npy", path):
        if candidate.exists():
            q = np.load(candidate)
            if q.shape == params.shape:
                _MEMORY[key] = q
                return q.copy()
    q = _relax_from_checkerboard(params, seed, progress)
    _MEMORY[key] = q
    try:
        with atomic_write(path) as fh:
            np.save(fh, q)
    except OSError:
        pass  # the cache is an optimisation only
    return q.copy()
