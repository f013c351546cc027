"""What a run will cost before it is run: the projection ``simulate`` and ``sweep`` print after the
first step, and the refusal when exact NEGF would take longer than :data:`COST_LIMIT_S`.

Exact NEGF costs O(N^3) per step (N = lx·ly sites: ~0.5 s at 30×28, ~100 s at 60×56 on one core),
so a lattice or a voltage without a covering ML model can turn a minute of ML dynamics into days.
The projection is measured, not modelled: the wall time of the first step (or of a timed probe call)
times the steps still to run::

    proj = project_cost("negf", first_step_s=95.0, steps=2000)
    if refuse(proj, requested="auto"):
        raise CostRefused(refusal_message(proj, lattice=(60, 56)))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Projected wall time (s) beyond which a run on exact NEGF that the user did not ask for by name
#: (``--backend negf``) is stopped after its first step with :func:`refusal_message`.
COST_LIMIT_S = 30 * 60.0


class CostRefused(ValueError):
    """A run refused because its projected wall time exceeds the limit (message: one line)."""


def format_duration(seconds: float) -> str:
    """A duration for people: 35 ms, 12.3 s, 4.5 min, 2.1 h, 3.4 days."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True)
class CostProjection:
    """Projected wall time of the rest of a run.

    ``seconds_per_step``: measured wall seconds of one BD step (one force call, all replicas of a
    batched call included); ``steps``: steps still to run; ``rounds``: how many times those steps are
    repeated one after the other (replica groups that cannot run in parallel; 1 for ``simulate``).
    """

    backend: str
    seconds_per_step: float
    steps: int
    rounds: int = 1

    @property
    def total_s(self) -> float:
        return self.seconds_per_step * max(0, self.steps) * max(1, self.rounds)

    def exceeds(self, limit_s: float = COST_LIMIT_S) -> bool:
        return self.total_s > limit_s

    def describe(self) -> str:
        """One line: "backend negf: 95.0 s/step × 2000 steps ≈ 2.2 days"."""
        reps = f" × {self.rounds} rounds" if self.rounds > 1 else ""
        per = (f"{self.seconds_per_step * 1e3:.1f} ms/step" if self.seconds_per_step < 1
               else f"{self.seconds_per_step:.1f} s/step")
        return (f"backend {self.backend}: {per} × {self.steps} steps{reps} "
                f"≈ {format_duration(self.total_s)}")


def project_cost(backend: str, first_step_s: float, steps: int, replicas: int = 1,
                 parallel: int = 1) -> CostProjection:
    """Projection from the measured seconds of one step: ``replicas`` independent runs of ``steps``
    steps each, ``parallel`` of them at a time (a batched call of all replicas: ``replicas=1``)."""
    if not (math.isfinite(first_step_s) and first_step_s >= 0):
        raise ValueError(f"first_step_s must be a finite time >= 0, got {first_step_s}")
    rounds = math.ceil(max(1, replicas) / max(1, parallel))
    return CostProjection(backend=str(backend), seconds_per_step=float(first_step_s), steps=int(steps),
                          rounds=rounds)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds)``: a probe call to measure before committing to a run."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def refuse(projection: CostProjection, requested: str, limit_s: float = COST_LIMIT_S) -> bool:
    """True when a run must stop: exact NEGF that was not requested by name would exceed ``limit_s``.

    ML backends are never refused (their cost is what the user asked for); ``--backend negf`` is
    the explicit way to insist on exact forces whatever they cost.
    """
    return projection.backend == "negf" and requested != "negf" and projection.exceeds(limit_s)


def refusal_message(projection: CostProjection, *, lattice: tuple[int, int] | None = None,
                    limit_s: float = COST_LIMIT_S) -> str:
    """The one-line explanation of a refused run and of the ways forward."""
    where = f" at {lattice[0]}×{lattice[1]}" if lattice is not None else ""
    return (f"no ML model covers this point, so it would run on exact NEGF{where}: "
            f"{projection.describe()}, over the {format_duration(limit_s)} limit. Options: "
            f"--backend negf to insist; fewer --steps; a smaller lattice (--lx/--ly); or a model that "
            f"covers these parameters (--model FILE.onnx; `neqforce info` lists what the server covers)")
