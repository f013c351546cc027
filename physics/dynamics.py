"""Overdamped Langevin (Brownian) dynamics of the lattice modes (SPEC §5).

    Q(t + dt) = Q(t) + dt F(Q(t)) + sqrt(2 T dt) ξ,   ξ ~ N(0, 1) per site and step (gamma = 1)

The noise of step s is drawn from ``SeedSequence([seed, s])``, so a run restarted at step s from
its saved Q continues bit-for-bit (no generator state to checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

#: A force field: Q (lx, ly) -> (F (lx, ly), n (lx, ly) or None).
ForceFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class BDState:
    """One Brownian-dynamics step: configuration Q(t) and the force (and density) evaluated on it."""

    step: int
    time: float
    q: np.ndarray
    force: np.ndarray
    density: np.ndarray | None


def step_noise(seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal noise of BD step ``step`` for run ``seed`` (independent of history)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step)])).standard_normal(shape)


def brownian_dynamics(q0: np.ndarray, force_fn: ForceFn, *, n_steps: int, dt: float = 0.1,
                      temperature: float = 0.1, seed: int = 0, start_step: int = 0) -> Iterator[BDState]:
    """Integrate from ``q0`` (the state at ``start_step``) and yield every state as it is reached.

    Yields the states at steps start_step, …, start_step + n_steps (n_steps + 1 force evaluations);
    the caller may stop iterating at any point. ``force_fn`` may be NEGF, ONNX or a remote server.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    q = np.array(q0, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(q)):
        raise ValueError("initial configuration contains NaN or Inf")
    amplitude = np.sqrt(2.0 * temperature * dt)
    end = start_step + n_steps
    for step in range(start_step, end + 1):
        force, density = force_fn(q)
        force = np.asarray(force, dtype=np.float64)
        if not np.all(np.isfinite(force)):
            raise FloatingPointError(f"non-finite force at step {step}")
        yield BDState(step=step, time=step * dt, q=q.copy(), force=force, density=density)
        if step < end:
            q = q + dt * force
            if amplitude > 0:
                q += amplitude * step_noise(seed, step, q.shape)
