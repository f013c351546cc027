"""Exact NEGF backend: :func:`neqforce.physics.negf_forces` on a bounded pool of workers.

Cost O(N^3), N = lx * ly (about 1 s at 840 sites on one core). By default each worker is a separate
*process* (``python -m neqforce.server.backends.negf_worker``, fed over a pipe), because parts of the
solver hold the GIL for most of a solve (scipy.linalg's eig/solve/schur wrappers do): in threads they
would stall every other request, health checks included. Processes also isolate the server from a
solver crash: the affected request fails with INTERNAL and the worker is restarted for the next one.
``mode="thread"`` computes in the server process (no start-up cost; for embedded single-user servers).

Each worker process gets ``OMP_NUM_THREADS`` (and the OpenBLAS/MKL equivalents) = cores / workers
unless the environment sets them.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future

import numpy as np

from neqforce.physics import HolsteinParams, negf_forces

from ..logs import log_event

log = logging.getLogger("neqforce.server.negf")

#: Model name reported for this backend.
NEGF_MODEL = "negf-exact"
MODES = ("process", "thread")
_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class NegfError(RuntimeError):
    """The solver failed or its worker process died."""


def negf_batch(q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
    """(force, density) float64 (batch, lx, ly): exact NEGF for each lattice of q (batch, lx, ly)."""
    force = np.empty(q.shape, dtype=np.float64)
    density = np.empty(q.shape, dtype=np.float64)
    for b in range(q.shape[0]):  # each lattice is an O(N^3) solve; the loop over the batch is negligible
        force[b], density[b] = negf_forces(np.asarray(q[b], dtype=np.float64), params)
    return force, density


class _WorkerProcess:
    """One worker process, started on first use and restarted after it dies."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.busy = False  # a job is inside the worker process

    def run(self, q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            proc = self.proc = subprocess.Popen(
                [sys.executable, "-m", "neqforce.server.backends.negf_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=self.env)
            log_event(log, logging.INFO, "negf_worker_started", pid=proc.pid)
        try:
            pickle.dump((np.ascontiguousarray(q), params), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            self.busy = True
            kind, payload = pickle.load(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            proc.kill()
            code = proc.wait()
            raise NegfError(f"NEGF worker process died (exit code {code}); it is restarted for the next "
                            "request") from None
        finally:
            self.busy = False
        if kind != "ok":
            raise NegfError(f"NEGF solver failed: {payload}")
        return payload

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class NegfBackend:
    """``workers`` dispatcher threads, each owning one worker (process or in-thread); ``submit`` returns a
    Future that a queued job can still be cancelled through."""

    def __init__(self, workers: int, mode: str = "process") -> None:
        if mode not in MODES:
            raise ValueError(f"NEGF pool mode must be one of {MODES}, got {mode!r}")
        self.workers, self.mode = workers, mode
        env = dict(os.environ)
        blas = str(max(1, (os.cpu_count() or 1) // workers))
        for name in _BLAS_ENV:
            env.setdefault(name, blas)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._procs = [_WorkerProcess(env) for _ in range(workers)] if mode == "process" else []
        self._threads = [threading.Thread(target=self._dispatch, args=(i,), daemon=True, name=f"negf-{i}")
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, q: np.ndarray, params: HolsteinParams) -> Future:
        """Queue one solve; RuntimeError once shut down."""
        if self._closed:
            raise RuntimeError("NEGF backend is shut down")
        future: Future = Future()
        self._jobs.put((future, q, params))
        return future

    def _dispatch(self, index: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, q, params = job
            if not future.set_running_or_notify_cancel():  # cancelled while queued
                continue
            try:
                result = self._procs[index].run(q, params) if self._procs else negf_batch(q, params)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Cancel queued solves, stop the dispatchers and kill the worker processes."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for worker in self._procs:
            worker.stop()
