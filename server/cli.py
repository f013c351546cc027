"""``neqforce serve``: run the force server until SIGTERM/SIGINT (see :mod:`neqforce.server.app`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import typer


def serve(
    host: str = typer.Option(
        "127.0.0.1", help="Listen address; 0.0.0.0 or :: for all interfaces (then use TLS and a token)."),
    port: int = typer.Option(50051, min=0, max=65535, help="Listen port (0 picks a free one)."),
    model: list[Path] = typer.Option(
        None, "--model", help="ONNX model file (repeatable; default: the bundled model, if present)."),
    no_default_model: bool = typer.Option(
        False, "--no-default-model", help="Load no model unless --model is given (AUTO then uses NEGF)."),
    max_sites: int = typer.Option(
        1 << 20, min=1, help="Largest batch*lx*ly per request (sets the gRPC message size limits)."),
    negf_max_sites: int = typer.Option(
        3600, min=1, help="Largest lattice lx*ly for the O(N^3) NEGF backend."),
    max_concurrency: int = typer.Option(
        0, min=0, help="ONNX requests computed at once (0: the number of cores, at most 8)."),
    max_queue: int = typer.Option(
        64, min=0, help="ONNX requests that may wait for a compute slot before RESOURCE_EXHAUSTED."),
    negf_concurrency: int = typer.Option(
        0, min=0, help="NEGF requests computed at once = NEGF worker processes (0: as --max-concurrency)."),
    negf_max_queue: int = typer.Option(
        None, min=0, help="NEGF requests that may wait for a worker (default: as --max-queue)."),
    negf_max_work: float = typer.Option(
        None, min=1.0, help="Largest NEGF work of one request, sum over the batch of (lx*ly)^3 "
                            "(default: negf-max-sites^3)."),
    max_abs_q: float = typer.Option(
        100.0, min=0.0, max=1e6, help="Largest |Q| accepted in a request (INVALID_ARGUMENT beyond)."),
    stream_idle_timeout: float = typer.Option(
        300.0, min=0.0, help="Seconds a StreamForces stream may wait for its next request before the server "
                             "closes it (UNAVAILABLE; 0: never)."),
    token: str = typer.Option(
        None, envvar="NEQFORCE_TOKEN", help="Require metadata 'authorization: Bearer <token>' (a blank "
                                            "token is an error)."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate chain (with --tls-key: TLS on)."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key."),
    metrics_port: int = typer.Option(
        None, min=0, max=65535, help="Serve Prometheus /metrics on this port (0: a free one)."),
    metrics_host: str = typer.Option(
        "127.0.0.1", help="Address /metrics binds to (plain HTTP, no auth: keep it private)."),
    grace: float = typer.Option(10.0, min=0.0, help="Seconds in-flight calls get to finish on shutdown."),
    drain: float = typer.Option(
        0.0, min=0.0, help="Seconds health says NOT_SERVING before new calls are refused (LB drain)."),
    intra_op_threads: int = typer.Option(
        None, min=0, help="ONNX Runtime threads per model (default: cores/max-concurrency; 0: ORT default)."),
    param_rtol: float = typer.Option(
        1e-6, min=0.0, help="AUTO routing tolerance: |p - p_model| <= rtol * max(1, |p_model|)."),
    negf_pool: str = typer.Option(
        "process", help="Where NEGF runs: 'process' (worker processes) or 'thread' (in the server process)."),
    log_level: str = typer.Option("info", help="debug (one line per request), info, warning, error."),
) -> None:
    """Serve forces over gRPC (neqforce.v1.ForceService + health + reflection) until SIGTERM/SIGINT."""
    from neqforce.server import logs
    from neqforce.server.app import ServerConfig, start_server

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        typer.echo(f"error: unknown log level {log_level!r}", err=True)
        raise typer.Exit(2)
    logs.configure(log_level)
    files = [(tls_cert, "TLS certificate"), (tls_key, "TLS key"), *((m, "model") for m in model or [])]
    for path, what in files:
        if path is not None and not Path(path).is_file():
            typer.echo(f"error: {what} file not found: {path}", err=True)
            raise typer.Exit(2)
    models = [str(m) for m in model] if model else ([] if no_default_model else None)
    if token is None and "NEQFORCE_TOKEN" in os.environ:  # set but empty: click drops it, we refuse it
        token = os.environ["NEQFORCE_TOKEN"]
    try:
        cfg = ServerConfig(host=host, port=port, models=models, max_sites=max_sites,
                           negf_max_sites=negf_max_sites, max_concurrency=max_concurrency,
                           max_queue=max_queue, negf_concurrency=negf_concurrency,
                           negf_max_queue=negf_max_queue, negf_max_work=negf_max_work, max_abs_q=max_abs_q,
                           stream_idle_timeout_s=stream_idle_timeout,
                           token=token, tls_cert=tls_cert, tls_key=tls_key, metrics_port=metrics_port,
                           metrics_host=metrics_host, grace_s=grace, drain_s=drain,
                           intra_op_threads=intra_op_threads, param_rtol=param_rtol, negf_pool=negf_pool)
        server = start_server(cfg)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    metrics = f", metrics on :{server.metrics_port}/metrics" if server.metrics_port is not None else ""
    typer.echo(f"neqforce server listening on {server.address} (pid {os.getpid()}{metrics})")
    while not stop.wait(0.5):
        pass
    server.stop()
    if server.computing:  # ONNX Runtime calls past the grace period cannot be interrupted: do not wait
        from neqforce.server.logs import log_event

        log_event(logging.getLogger("neqforce.server"), logging.WARNING, "exit_with_calls_running",
                  computing=server.computing, detail="ONNX Runtime calls cannot be interrupted; exiting "
                                                     "without waiting for them")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``neqforce`` app."""
    app.command("serve")(serve)
