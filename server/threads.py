"""The gRPC handler thread pool: daemon threads that interpreter exit does not wait for.

``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit, so a shut-down server whose handler
is still inside an ONNX Runtime call (which cannot be interrupted) would keep the process alive until
that call returns. These threads are daemons and are never joined: shutdown stays bounded by the grace
period (see :meth:`neqforce.server.app.RunningServer.stop`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class DaemonThreadPool(Executor):
    """At most ``max_workers`` daemon threads, started on demand and reused (like ThreadPoolExecutor)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "pool") -> None:
        self._max_workers, self._prefix = max_workers, thread_name_prefix
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if len(self._threads) < self._max_workers:
                    thread = threading.Thread(target=self._worker, daemon=True,
                                              name=f"{self._prefix}_{len(self._threads)}")
                    self._threads.append(thread)
                    thread.start()
        return future

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - kept in the future, like ThreadPoolExecutor
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; threads exit once idle. Busy threads are never waited for (``wait`` is
        accepted for the Executor interface): they are daemons."""
        self._shutdown = True
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
