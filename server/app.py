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
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from neqforce import __version__
from neqforce.models import bundled_model_path
from neqforce.v1 import SERVICE_NAME
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .auth import TokenInterceptor, check_tls_files, server_credentials
from .backends.negf import NegfBackend
from .backends.onnx import OnnxModel, unique_names
from .config import KEEPALIVE_OPTIONS, ServerConfig, is_loopback
from .logs import log_event
from .metrics import Metrics
from .service import ForceServicer
from .threads import DaemonThreadPool

__all__ = ["RunningServer", "ServerConfig", "load_models", "start_server"]

log = logging.getLogger("neqforce.server")

#: Seconds ``stop`` waits for gRPC's own shutdown beyond the grace period (cancelled calls to end).
STOP_MARGIN_S = 2.0


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
        ``grace`` seconds (default ``cfg.grace_s``), then cancel what is left and release resources.

        Returns within drain + grace + a few seconds. NEGF solves still running are killed; an ONNX
        Runtime call still running cannot be interrupted: its (daemon) thread is left behind and
        ``computing`` says how many are (``neqforce serve`` then exits without waiting for them).
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.cfg.grace_s if grace is None else grace
            log_event(log, logging.INFO, "shutdown_started", grace_s=grace, drain_s=self.cfg.drain_s)
            self._health.enter_graceful_shutdown()
            if self.cfg.drain_s > 0:
                time.sleep(self.cfg.drain_s)
            self._server.stop(grace).wait(grace + STOP_MARGIN_S)
            self.servicer.close()
            self._negf.shutdown()
            self.servicer.settle(STOP_MARGIN_S)  # requests failed by the shutdown report before it completes
            self._metrics.close()
            self._stopped.set()
            log_event(log, logging.INFO, "shutdown_complete", computing=self.computing)

    @property
    def computing(self) -> int:
        """Requests still computing (after ``stop``: ONNX Runtime calls that could not be interrupted)."""
        return self.servicer.computing

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
    tls = cfg.tls_cert is not None
    if tls:
        check_tls_files(cfg.tls_cert, cfg.tls_key)
    models = load_models(cfg)
    metrics = Metrics()
    negf = NegfBackend(workers=cfg.negf_concurrency, mode=cfg.negf_pool)
    servicer = ForceServicer(cfg, models, negf, metrics)
    options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
               ("grpc.max_send_message_length", cfg.max_message_bytes),
               ("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS]
    interceptors = [TokenInterceptor(cfg.token, metrics)] if cfg.token else []
    server = grpc.server(DaemonThreadPool(max_workers=cfg.grpc_threads, thread_name_prefix="grpc"),
                         interceptors=interceptors, options=options,
                         maximum_concurrent_rpcs=cfg.grpc_threads)
    pb_grpc.add_ForceServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    bind = _format_address(cfg.host, cfg.port)
    try:
        port = (server.add_secure_port(bind, server_credentials(cfg.tls_cert, cfg.tls_key)) if tls
                else server.add_insecure_port(bind))
    except RuntimeError as exc:
        servicer.close()
        negf.shutdown()
        raise OSError(f"cannot listen on {bind}: {exc}") from None
    if port == 0:
        servicer.close()
        negf.shutdown()
        raise OSError(f"cannot listen on {bind}")
    try:
        metrics_port = (metrics.serve(cfg.metrics_host, cfg.metrics_port) if cfg.metrics_port is not None
                        else None)
    except OSError as exc:
        servicer.close()
        negf.shutdown()
        server.stop(0)
        raise OSError(f"cannot serve metrics on {_format_address(cfg.metrics_host, cfg.metrics_port)}: "
                      f"{exc.strerror or exc}") from None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _security_warnings(cfg, tls, metrics_port)
    log_event(log, logging.INFO, "server_started", address=_format_address(cfg.host, port),
              version=__version__, tls=tls, auth=cfg.token is not None, models=sorted(models),
              metrics_port=metrics_port, max_sites=cfg.max_sites, negf_max_sites=cfg.negf_max_sites,
              max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue,
              negf_concurrency=cfg.negf_concurrency, negf_max_queue=cfg.negf_max_queue,
              negf_max_work=cfg.negf_max_work, max_abs_q=cfg.max_abs_q,
              stream_idle_timeout_s=cfg.stream_idle_timeout_s)
    return RunningServer(cfg, server, port, health_servicer, negf, metrics, metrics_port, servicer)


def _security_warnings(cfg: ServerConfig, tls: bool, metrics_port: int | None) -> None:
    """One warning line per risky combination: reachable off this machine without TLS or without a
    token, TLS without a token, a /metrics endpoint (plain HTTP, no auth) off loopback."""
    token = cfg.token is not None
    if not cfg.is_loopback and not (tls and token):
        missing = " and ".join(w for w, ok in (("TLS", tls), ("a token", token)) if not ok)
        log_event(log, logging.WARNING, "insecure_remote_listen", host=cfg.host, tls=tls, token=token,
                  advice=f"listening on {cfg.host} without {missing}: anyone who can reach the port can "
                         "call (and read) it; use --tls-cert/--tls-key and NEQFORCE_TOKEN off loopback")
    elif tls and not token:
        log_event(log, logging.WARNING, "tls_without_token", host=cfg.host,
                  advice="TLS encrypts the traffic but anyone who can reach the port may call it; "
                         "set NEQFORCE_TOKEN to require a token")
    if metrics_port is not None and not is_loopback(cfg.metrics_host):
        log_event(log, logging.WARNING, "metrics_public", host=cfg.metrics_host, port=metrics_port,
                  advice="/metrics is plain HTTP without authentication: bind it to 127.0.0.1 "
                         "(--metrics-host) or a private network, or firewall the port")
