"""Exact NEGF backend: :func:`neqforce.physics.negf_forces` on a worker thread pool.

The eigen-decomposition and matrix products release the GIL (LAPACK/BLAS), so a pool of
``max_concurrency`` threads computes that many lattices in parallel. Cost O(N^3), N = lx * ly.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from neqforce.physics import HolsteinParams, negf_forces

#: Model name reported for this backend.
NEGF_MODEL = "negf-exact"


def negf_batch(q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
    """(force, density) float64 (batch, lx, ly): exact NEGF for each lattice of q (batch, lx, ly)."""
    force = np.empty(q.shape, dtype=np.float64)
    density = np.empty(q.shape, dtype=np.float64)
    for b in range(q.shape[0]):  # each lattice is an O(N^3) solve; the loop over the batch is negligible
        force[b], density[b] = negf_forces(np.asarray(q[b], dtype=np.float64), params)
    return force, density


class NegfBackend:
    """Runs :func:`negf_batch` on a bounded thread pool; ``submit`` returns a Future."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="negf")

    def submit(self, q: np.ndarray, params: HolsteinParams) -> Future:
        return self.pool.submit(negf_batch, q, params)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
