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
    """The NEGF computation did not produce a result (base class; alone: the worker process died)."""


class NegfSolverError(NegfError):
    """The solver refused or failed on this input (a numerical failure: the input is the cause)."""


class NegfAbandoned(NegfError):
    """The solve was stopped on purpose: its client gave up, or the server is shutting down."""


def blas_threads(workers: int = 1) -> int:
    """BLAS/LAPACK threads of one NEGF solve on a server with ``workers`` NEGF workers: cores // workers.

    LAPACK's eigensolvers split their work by thread count, so the result of a solve depends on it at the
    ~1e-12 level (it is deterministic for a given count). A count set in the environment
    (``OMP_NUM_THREADS`` and the OpenBLAS/MKL equivalents, first one set) wins, as it does for the worker
    processes. ``blas_threads(1)`` is also what an in-thread solve of the embedded server of ``simulate``
    gets (OpenBLAS's default: every core, unless the environment says otherwise), so the AUTO fallback of
    a sweep task solves with it to reproduce ``simulate`` bit for bit."""
    for name in _BLAS_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def negf_batch(q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
    """(force, density) float64 (batch, lx, ly): exact NEGF for each lattice of q (batch, lx, ly)."""
    force = np.empty(q.shape, dtype=np.float64)
    density = np.empty(q.shape, dtype=np.float64)
    for b in range(q.shape[0]):  # each lattice is an O(N^3) solve; the loop over the batch is negligible
        force[b], density[b] = negf_forces(np.asarray(q[b], dtype=np.float64), params)
    return force, density


class _WorkerProcess:
    """One worker process, started on first use and restarted after it dies or is stopped.

    The process runs in its own process group (a terminal's Ctrl-C does not reach it; it also ignores
    SIGINT) and is only ever stopped by this parent, with SIGKILL: a LAPACK call cannot be interrupted
    any other way.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.busy = False  # a job is inside the worker process
        self.job: Future | None = None  # the future of the job being computed
        self._stop_reason: str | None = None
        self._closed = False  # stopped for good (server shutdown): never started again
        self._lock = threading.Lock()

    def start(self) -> subprocess.Popen:
        """The running worker process, started if there is none; NegfAbandoned after ``stop``."""
        with self._lock:
            if self._closed:
                raise NegfAbandoned("NEGF solve stopped: the server is shutting down")
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "neqforce.server.backends.negf_worker"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, env=self.env, process_group=0)
                log_event(log, logging.INFO, "negf_worker_started", pid=self.proc.pid)
            return self.proc

    def run(self, future: Future, q: np.ndarray, params: HolsteinParams) -> tuple[np.ndarray, np.ndarray]:
        proc = self.start()
        with self._lock:
            self.job, self._stop_reason = future, None
        try:
            pickle.dump((np.ascontiguousarray(q), params), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            self.busy = True
            kind, payload = pickle.load(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            proc.kill()
            code = proc.wait()
            if self._stop_reason is not None:
                raise NegfAbandoned(f"NEGF solve stopped: {self._stop_reason}") from None
            raise NegfError(f"NEGF worker process died (exit code {code}); it is restarted for the next "
                            "request") from None
        finally:
            self.busy = False
            with self._lock:
                self.job = None
        if kind != "ok":
            raise NegfSolverError(payload)
        return payload

    def stop_job(self, future: Future, reason: str) -> bool:
        """Kill the process if it is computing ``future`` (the job then fails with NegfAbandoned)."""
        with self._lock:
            if self.job is not future or self.proc is None:
                return False
            self._stop_reason = reason
            self.proc.kill()
            return True

    def stop(self, reason: str = "the server is shutting down") -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            self._stop_reason, self._closed = reason, True
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class NegfBackend:
    """``workers`` dispatcher threads, each owning one worker (process or in-thread); ``submit`` returns a
    Future; ``abandon`` stops a job whose client gave up (queued: cancelled; running in a worker process:
    the process is killed at once and a fresh one started)."""

    def __init__(self, workers: int, mode: str = "process") -> None:
        if mode not in MODES:
            raise ValueError(f"NEGF pool mode must be one of {MODES}, got {mode!r}")
        self.workers, self.mode = workers, mode
        env = dict(os.environ)
        blas = str(blas_threads(workers))
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

    def abandon(self, future: Future, reason: str) -> bool:
        """Stop the job of ``future``: True when it was cancelled or its worker process killed, False when
        it cannot be stopped (``mode="thread"``: it runs to completion) or has already finished."""
        if future.cancel():
            return True
        return any(worker.stop_job(future, reason) for worker in self._procs)

    def _dispatch(self, index: int) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, q, params = job
            if not future.set_running_or_notify_cancel():  # cancelled while queued
                continue
            try:
                if self._procs:
                    result = self._procs[index].run(future, q, params)
                else:
                    try:
                        result = negf_batch(q, params)  # the process's BLAS setting (blas_threads(1))
                    except Exception as exc:  # numerical failure on this input
                        raise NegfSolverError(f"{type(exc).__name__}: {exc}") from None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)
                if isinstance(exc, NegfAbandoned) and not self._closed:
                    try:
                        self._procs[index].start()  # a fresh process, ready for the next job
                    except NegfAbandoned:  # shut down meanwhile
                        pass
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Cancel queued solves, stop the dispatchers and kill the worker processes (a solve in
        progress fails with NegfAbandoned)."""
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
