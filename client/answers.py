"""What answered each force call of a run, recorded in its trajectory (``simulate`` and ``sweep``).

Per step, ``series/force_std_max`` of the trajectory holds the largest committee spread of the force
(force units; -1: the model has no committee, 0: exact NEGF, NaN: not known). Every change of who
answered and how — backend, model, ``flagged``, and the kind of reason (``OUTSIDE_DOMAIN``,
``HIGH_SPREAD``, an exact-NEGF fallback for a high spread) — is appended to the trajectory's
``extra["answers"]``: ``{"step", "backend", "model", "flagged", "reason"}`` with the full reason of the
first answer of the change, cut at :data:`MAX_REASON` characters (the numbers in a reason, e.g. the
spread, change every step and are not events). At most :data:`MAX_EVENTS` are kept; further ones are
counted in ``extra["answers_dropped"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Events kept per run, and characters kept of each reason: the run state (trajectory extra) has 64 KiB
#: (neqforce.trajectory.STATE_CAPACITY), and a run flipping between ML and NEGF would otherwise fill it.
MAX_EVENTS = 64
MAX_REASON = 240
#: Reason words that make an answer an event of its own (docs/server.md, AUTO policy and flags).
REASON_CODES = ("OUTSIDE_DOMAIN", "HIGH_SPREAD")


@dataclass(frozen=True)
class Answer:
    """Who answered one force call and how sure it is."""

    backend: str
    model: str
    flagged: bool
    reason: str
    force_std_max: float = math.nan

    @property
    def kind(self) -> tuple[str, ...]:
        """The reason's event words; ``spread->NEGF`` when a high spread sent the request to exact NEGF."""
        codes = tuple(c for c in REASON_CODES if c in self.reason)
        if self.backend == "negf" and "committee spread" in self.reason:
            codes += ("spread->NEGF",)
        return codes


def answer_of(result: Any) -> Answer:
    """The :class:`Answer` of a :class:`neqforce.client.client.ForceResult`."""
    return Answer(backend=str(result.backend), model=str(result.model), flagged=bool(result.flagged),
                  reason=str(result.reason), force_std_max=float(result.force_std_max))


def note_answer(extra: dict[str, Any], step: int, answer: Answer | None) -> float:
    """Append ``answer`` to ``extra["answers"]`` when it differs from the previous answer (module
    docstring); returns its force_std_max (NaN for None) for ``series/force_std_max``."""
    if answer is None:
        return math.nan
    events = extra.setdefault("answers", [])
    key = [answer.backend, answer.model, answer.flagged, list(answer.kind)]
    if extra.get("answers_last") == key:
        return answer.force_std_max
    extra["answers_last"] = key  # the last change, kept or not
    if len(events) >= MAX_EVENTS:
        extra["answers_dropped"] = int(extra.get("answers_dropped", 0)) + 1
        return answer.force_std_max
    events.append({"step": int(step), "backend": answer.backend, "model": answer.model,
                   "flagged": answer.flagged, "kind": list(answer.kind),
                   "reason": answer.reason[:MAX_REASON]})
    return answer.force_std_max
