"""The Dask engine behind ``neqforce sweep`` and ``neqforce dataset generate``.

    with dask_client(None, n_workers=2, echo=print) as client:        # embedded LocalCluster
        ...
    with dask_client("tcp://10.0.0.5:8786", echo=print) as client:    # an existing cluster

The embedded cluster has one single-threaded worker *process* per core when exact NEGF runs in the
workers (it holds the GIL in scipy's LAPACK wrappers, so threads would not run in parallel), and one
worker with a thread per core when only ONNX Runtime (which releases the GIL) or a --server computes
(no process start-up, one model session shared by the threads). Nothing to start by hand; it is
closed when the block ends. Tasks report progress through a :class:`distributed.Queue` and are asked
to stop (checkpoint and return) through a :class:`distributed.Event` (:class:`TaskChannel`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Echo = Callable[[str], None]

#: Seconds to wait for an existing scheduler before giving up with a one-line error.
CONNECT_TIMEOUT_S = 10.0


def default_workers() -> int:
    """Worker processes of the embedded cluster: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_address(address: str) -> str:
    text = address.strip()
    if not text:
        raise ValueError("--scheduler: empty address; give tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)")
    if "://" not in text:
        text = "tcp://" + text
    scheme, rest = text.split("://", 1)
    host, sep, port = rest.rpartition(":")
    known = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
    if scheme not in known or not sep or not host or not port.isdigit():
        raise ValueError(f"--scheduler {address!r}: not an address like tcp://HOST:PORT")
    return text


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start child processes with Ctrl-C ignored (a terminal sends it to the whole process group;
    the client alone handles it: it asks the tasks to checkpoint, then stops the cluster)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None, echo: Echo = print,
                timeout: float = CONNECT_TIMEOUT_S, processes: bool = True) -> Iterator[Any]:
    """A :class:`distributed.Client` on ``scheduler`` ("tcp://HOST:PORT"), or on an embedded
    LocalCluster of ``n_workers`` single-threaded worker processes (default: one per core); with
    ``processes=False``, one in-process worker with ``n_workers`` threads. The embedded cluster logs
    only CRITICAL messages: task errors reach the client through their futures, and the workers'
    heartbeat errors while a Ctrl-C tears the cluster down are noise, not news.

    An unreachable or malformed scheduler address is a ValueError with a one-line message.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is not None:
        address = _check_address(scheduler)
        try:
            client = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except Exception as exc:  # OSError/TimeoutError from the comm layer, ValueError from parsing
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {reason}") from None
        where = f"Dask scheduler {address}"
    else:
        n = default_workers() if n_workers is None else int(n_workers)
        if n < 1:
            raise ValueError(f"--workers must be >= 1, got {n}")
        if processes:
            with _sigint_ignored():
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
                                       scheduler_port=0)
            where = f"embedded Dask LocalCluster ({n} worker process{'es' if n > 1 else ''}, 1 thread each)"
        else:
            cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
                                   scheduler_port=0)
            where = f"embedded Dask LocalCluster (1 in-process worker, {n} thread{'s' if n > 1 else ''})"
        client = Client(cluster, set_as_default=False)
    try:
        workers = client.nthreads()
        link = client.dashboard_link
        port = client.scheduler_info().get("services", {}).get("dashboard") if cluster is not None else None
        if port:  # the embedded cluster serves it on loopback only; Dask's link names the machine's address
            link = f"http://127.0.0.1:{port}/status"
        note = "" if importlib.util.find_spec("bokeh") else " (install bokeh to serve it)"
        echo(f"{where}: {len(workers)} worker(s), {sum(workers.values())} thread(s); "
             f"dashboard {link}{note}")
        yield client
    finally:
        try:
            client.close(timeout=10)
        finally:
            if cluster is not None:
                cluster.close(timeout=10)


def worker_threads(client: Any) -> int:
    """Threads over all workers of the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))


class TaskChannel:
    """Progress messages from tasks and a stop request to them, for one sweep or dataset generation.

    Progress: tasks call :func:`report_progress` (``Worker.log_event`` on a topic unique to this
    channel; no client inside the worker); the client collects the events with ``subscribe_topic``.
    Stop: a file in the output folder (the tasks write there anyway), polled by :func:`stop_requested`.
    """

    def __init__(self, client: Any, stop_file: str | os.PathLike[str], prefix: str = "neqforce") -> None:
        import threading as _threading

        self.topic = f"{prefix}-progress-{uuid.uuid4().hex[:12]}"
        self.stop_file = str(stop_file)
        os.makedirs(os.path.dirname(self.stop_file) or ".", exist_ok=True)
        if os.path.exists(self.stop_file):
            os.unlink(self.stop_file)
        self._lock = _threading.Lock()
        self._messages: list[Any] = []
        self._client = client
        client.subscribe_topic(self.topic, self._receive)

    def _receive(self, event: Any) -> None:
        with self._lock:
            self._messages.append(event[1])

    def drain(self) -> list[Any]:
        """Every message received since the last call."""
        with self._lock:
            out, self._messages = self._messages, []
        return out

    def request_stop(self) -> None:
        with open(self.stop_file, "w") as fh:
            fh.write("stop\n")

    def close(self) -> None:
        try:
            self._client.unsubscribe_topic(self.topic)
        except Exception:  # pragma: no cover - client already closed
            pass
        if os.path.exists(self.stop_file):
            os.unlink(self.stop_file)


def report_progress(topic: str | None, message: Any) -> None:
    """Send ``message`` to the channel ``topic`` from inside a Dask task (a no-op elsewhere)."""
    if not topic:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker
        return
    worker.log_event(topic, message)


def stop_requested(stop_file: str | None) -> bool:
    """True once the client asked the tasks to stop."""
    return bool(stop_file) and os.path.exists(str(stop_file))
