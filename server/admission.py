"""Bounded concurrency with a bounded queue, one per backend: at most ``slots`` requests compute,
``queue`` more wait. ONNX and NEGF have separate instances, so an ML request never waits for NEGF work."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import exhausted
from .metrics import Metrics

#: Waiting requests re-check their deadline and cancellation this often, seconds.
POLL_S = 0.1


class Admission:
    """Compute slots of one backend. ``acquire`` raises RESOURCE_EXHAUSTED when the queue is full,
    returns False when the caller's deadline passes or it is cancelled while waiting."""

    def __init__(self, backend: str, slots: int, queue: int, metrics: Metrics) -> None:
        self.backend, self.slots, self.queue = backend, slots, queue
        self.active = self.waiting = 0
        self._cond = threading.Condition()
        self._in_flight = metrics.in_flight.labels(backend)
        self._queued = metrics.queued.labels(backend)

    def acquire(self, time_remaining: Callable[[], float | None], is_active: Callable[[], bool]) -> bool:
        with self._cond:
            if self.active < self.slots:
                self.active += 1
                self._in_flight.set(self.active)
                return True
            if self.waiting >= self.queue:
                raise exhausted(f"server busy: {self.active} {self.backend.upper()} requests computing and "
                                f"{self.waiting} queued (slots {self.slots}, queue {self.queue}); retry")
            self.waiting += 1
            self._queued.set(self.waiting)
            try:
                while self.active >= self.slots:
                    remaining = time_remaining()
                    if (remaining is not None and remaining <= 0) or not is_active():
                        return False
                    self._cond.wait(POLL_S if remaining is None else min(POLL_S, remaining))
                self.active += 1
                self._in_flight.set(self.active)
                return True
            finally:
                self.waiting -= 1
                self._queued.set(self.waiting)

    def release(self) -> None:
        with self._cond:
            self.active -= 1
            self._in_flight.set(self.active)
            self._cond.notify()
