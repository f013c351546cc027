"""Connect to a force server, or start an embedded one on a free loopback port for the duration.

    with connect(None) as conn:                 # embedded: bundled model (or exact NEGF only)
        with conn.client.stream(params) as s: ...
    with connect("gpu-box:50051", token=...) as conn: ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .interrupt import active


@dataclass
class Connection:
    """An open :class:`neqforce.client.ForceClient` and where it points."""

    client: Any
    address: str
    embedded: bool

    def describe(self) -> str:
        return f"embedded server on {self.address}" if self.embedded else f"server {self.address}"


def embedded_config(model: str | os.PathLike[str] | None = None) -> Any:
    """Server settings of an embedded server: loopback, free port, one computation at a time (a
    simulation streams one configuration after another), NEGF in this process, no metrics endpoint."""
    from neqforce.server.app import ServerConfig

    models = None
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        models = [str(path)]
    # one user, one process: NEGF in a thread (no worker start-up; Ctrl-C reaches one process only)
    return ServerConfig(host="127.0.0.1", port=0, models=models, max_concurrency=1, metrics_port=None,
                        grace_s=1.0, negf_pool="thread")


@contextmanager
def connect(server: str | None = None, *, token: str | None = None,
            tls_ca: str | os.PathLike[str] | None = None, model: str | os.PathLike[str] | None = None,
            timeout: float = 300.0, retries: int = 3) -> Iterator[Connection]:
    """Yield a :class:`Connection` to ``server`` ("HOST:PORT"), or to an embedded server when None.

    ``model`` (an ONNX file) only applies to the embedded server; ``token``/``tls_ca`` only to a
    remote one. The embedded server is stopped when the block ends.
    """
    from neqforce.client import ForceClient

    if server is not None and model is not None:
        raise ValueError("--model selects the embedded server's model; a running server has its own "
                         "(omit --server, or omit --model)")
    if tls_ca is not None and not Path(tls_ca).is_file():
        raise ValueError(f"TLS CA file not found: {tls_ca}")
    running = None
    try:
        if server is None:
            from neqforce.server.app import start_server

            with _protected():  # Ctrl-C while the server starts: raised once it runs (and is stopped)
                running = start_server(embedded_config(model))
            address = running.address
        else:
            address = server
        client = ForceClient(address, token=token if running is None else None,
                             tls_ca=str(tls_ca) if tls_ca is not None and running is None else None,
                             timeout=timeout, retries=retries)
        try:
            yield Connection(client=client, address=address, embedded=running is not None)
        finally:
            _bounded(client.close, "closing the connection")
    finally:
        if running is not None:
            interrupted = (guard := active()) is not None and guard.interrupted
            _bounded(lambda: running.stop(grace=0.0 if interrupted else 1.0), "stopping the embedded server")


@contextmanager
def _protected() -> Iterator[None]:
    guard = active()
    if guard is None:
        yield
        return
    with guard.protected():
        yield


#: Seconds a teardown step (closing the channel, stopping the embedded server) may take after Ctrl-C.
TEARDOWN_S = 10.0


def _bounded(fn: Callable[[], Any], what: str) -> None:
    """Run a teardown step so that a Ctrl-C cannot cut it in half (a gRPC channel whose close was
    interrupted waits for ever in the next close) and, once Ctrl-C was pressed, the process exits
    with 130 if it takes longer than :data:`TEARDOWN_S` after it."""
    guard = active()
    if guard is None:
        fn()
        return
    with guard.protected(), guard.deadline(TEARDOWN_S, f"{what} took over {TEARDOWN_S:g} s after Ctrl-C; "
                                                       f"exiting (the run file holds every step done)"):
        fn()
