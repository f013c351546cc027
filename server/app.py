"""Assemble and run a server: models, backends, gRPC (health, reflection, auth, TLS), metrics, shutdown.

    from neqforce.server.app import ServerConfig, start_server
    srv = start_server(ServerConfig(port=0, models=[]))   # srv.address == "127.0.0.1:<port>"
    ...
    srv.stop()                                             # graceful: NOT_SERVING, drain, grace period
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from neqforce import __version__
from neqforce.models import bundled_model_path
from neqforce.v1 import SERVICE_NAME
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .auth import TokenInterceptor, server_credentials
from .backends.negf import NegfBackend
from .backends.onnx import OnnxModel, unique_names
from .config import ServerConfig
from .logs import log_event
from .metrics import Metrics
from .service import ForceServicer

__all__ = ["RunningServer", "ServerConfig", "load_models", "start_server"]

log = logging.getLogger("neqforce.server")


def model_paths(cfg: ServerConfig) -> list[Path]:
    """The files to load: ``cfg.models``, or the bundled model (if present) when it is None."""
    if cfg.models is None:
        bundled = bundled_model_path()
        return [bundled] if bundled.is_file() else []
    return [Path(p) for p in cfg.models]


def load_models(cfg: ServerConfig) -> dict[str, OnnxModel]:
    """Load every model of the configuration, keyed by unique name; ValueError on a broken file."""
    paths = model_paths(cfg)
    return {name: OnnxModel.load(path, name, cfg.providers, cfg.onnx_threads)
            for name, path in zip(unique_names(paths), paths, strict=True)}


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RunningServer:
    """A started server. ``stop`` is graceful and idempotent; ``wait`` blocks until it has stopped."""

    def __init__(self, cfg: ServerConfig, server: grpc.Server, port: int,
                 health_servicer: health.HealthServicer, negf: NegfBackend, metrics: Metrics,
                 metrics_port: int | None, servicer: ForceServicer) -> None:
        self.cfg, self.port, self.metrics_port = cfg, port, metrics_port
        self.servicer = servicer
        self._server, self._health, self._negf, self._metrics = server, health_servicer, negf, metrics
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` a client on this machine can dial."""
        wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}
        host = wildcard.get(self.cfg.host, self.cfg.host)
        return _format_address(host, self.port)

    def stop(self, grace: float | None = None) -> None:
        """Health -> NOT_SERVING, wait ``drain_s``, refuse new calls, let in-flight calls finish within
        ``grace`` seconds (default ``cfg.grace_s``), then cancel what is left and release resources."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.cfg.grace_s if grace is None else grace
            log_event(log, logging.INFO, "shutdown_started", grace_s=grace, drain_s=self.cfg.drain_s)
            self._health.enter_graceful_shutdown()
            if self.cfg.drain_s > 0:
                time.sleep(self.cfg.drain_s)
            self._server.stop(grace).wait()
            self._negf.shutdown()
            self._metrics.close()
            self._stopped.set()
            log_event(log, logging.INFO, "shutdown_complete")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` seconds passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(cfg: ServerConfig) -> RunningServer:
    """Load models, bind, start serving; returns once the server accepts calls.

    Raises ValueError for a broken model or configuration, OSError when the address cannot be bound.
    """
    models = load_models(cfg)
    metrics = Metrics()
    negf = NegfBackend(workers=cfg.max_concurrency, mode=cfg.negf_pool)
    servicer = ForceServicer(cfg, models, negf, metrics)
    options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
               ("grpc.max_send_message_length", cfg.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    interceptors = [TokenInterceptor(cfg.token, metrics)] if cfg.token else []
    server = grpc.server(ThreadPoolExecutor(max_workers=cfg.grpc_threads, thread_name_prefix="grpc"),
                         interceptors=interceptors, options=options,
                         maximum_concurrent_rpcs=cfg.grpc_threads)
    pb_grpc.add_ForceServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    bind = _format_address(cfg.host, cfg.port)
    tls = cfg.tls_cert is not None
    try:
        port = (server.add_secure_port(bind, server_credentials(cfg.tls_cert, cfg.tls_key)) if tls
                else server.add_insecure_port(bind))
    except RuntimeError as exc:
        negf.shutdown()
        raise OSError(f"cannot listen on {bind}: {exc}") from None
    if port == 0:
        negf.shutdown()
        raise OSError(f"cannot listen on {bind}")
    metrics_port = metrics.serve(cfg.host, cfg.metrics_port) if cfg.metrics_port is not None else None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if not cfg.is_loopback and not (tls and cfg.token):
        log_event(log, logging.WARNING, "insecure_remote_listen", host=cfg.host, tls=tls,
                  token=cfg.token is not None, advice="use --tls-cert/--tls-key and --token off loopback")
    log_event(log, logging.INFO, "server_started", address=_format_address(cfg.host, port),
              version=__version__, tls=tls, auth=cfg.token is not None, models=sorted(models),
              metrics_port=metrics_port, max_sites=cfg.max_sites, negf_max_sites=cfg.negf_max_sites,
              max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue)
    return RunningServer(cfg, server, port, health_servicer, negf, metrics, metrics_port, servicer)
