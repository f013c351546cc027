"""Server configuration: a frozen dataclass for by :func:`neqforce.server.app.start_server` and the CLI."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Bytes per site in the largest message: FP64 force + FP64 density (a request's FP64 q is half of that).
BYTES_PER_SITE = 16
#: Headroom for message framing, parameters and strings, bytes.
MESSAGE_OVERHEAD = 1 << 20
#: Default largest |Q| (units of the displacement, k = 1): ~40x the bulk CDW amplitude q0 = 2.39
#: (docs/physics.md); far beyond any state the dynamics visits, and exactly representable in float32.
DEFAULT_MAX_ABS_Q = 100.0
#: Largest max_abs_q a server may be configured with: beyond ~1e6 the NEGF density loses digits.
MAX_ABS_Q_LIMIT = 1e6
#: gRPC handler threads kept free of computing / queued calls (health checks, GetServerInfo).
SPARE_THREADS = 4
#: gRPC keepalive (server side), milliseconds: ping an idle connection every 60 s and drop it when no
#: answer comes within 20 s (a vanished client then frees its stream and its NEGF work); accept client
#: pings every 10 s or more, also when no call is open.
KEEPALIVE_OPTIONS = (("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                     ("grpc.http2.max_ping_strikes", 2))


def _default_concurrency() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``neqforce serve`` can be told.

    Attributes:
        host, port: listen address; port 0 picks a free port (see ``RunningServer.port``).
        models: ONNX model files to load; ``None`` = the bundled model if it exists, ``[]`` = none.
        max_sites: largest batch * lx * ly in one request (sets the gRPC message size limits).
        negf_max_sites: largest lattice lx * ly the exact NEGF backend takes (its cost is O(N^3)).
        max_concurrency: ONNX requests computed at the same time.
        max_queue: ONNX requests allowed to wait for a compute slot; beyond it RESOURCE_EXHAUSTED.
        negf_concurrency: NEGF requests computed at the same time (= NEGF worker processes); 0 = the
            same as ``max_concurrency``. NEGF has its own slots and queue, so ONNX never waits for it.
        negf_max_queue: NEGF requests allowed to wait; ``None`` = the same as ``max_queue``.
        negf_max_work: largest total NEGF work of one request, sum over the batch of (lx*ly)^3;
            ``None`` = ``negf_max_sites**3`` (one lattice of the largest size).
        max_abs_q: largest |Q| accepted (INVALID_ARGUMENT beyond); must be in (0, 1e6].
        max_streams: StreamForces calls open at the same time; beyond it RESOURCE_EXHAUSTED.
        stream_idle_timeout_s: a stream that waits this long for its next request is ended with
            UNAVAILABLE (the client library reopens it); 0 = never.
        token: if set, every ForceService call needs metadata ``authorization: Bearer <token>``;
            a blank (empty or whitespace) token is an error.
        tls_cert, tls_key: PEM files; both set = TLS, neither = plaintext.
        metrics_port: Prometheus /metrics port (0 = a free port); ``None`` = no metrics endpoint.
        metrics_host: address the /metrics endpoint binds to (plain HTTP, no auth: keep it private).
        grace_s: on shutdown, in-flight calls get this many seconds to finish before they are cancelled.
        drain_s: on shutdown, health reports NOT_SERVING this long before new calls are refused.
        providers: ONNX Runtime execution providers in priority order; ``None`` = CUDA (when available)
            then CPU.
        intra_op_threads: ONNX Runtime intra-op threads per session; ``None`` = cores / max_concurrency
            (at least 1), 0 = ONNX Runtime's own default.
        param_rtol: AUTO routing tolerance, |request - model| <= param_rtol * max(1, |model|) per parameter.
        negf_pool: "process" (default: NEGF in spawned worker processes, no GIL stalls, crash isolation) or
            "thread" (in-process threads: no start-up cost, for embedded single-user servers).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    models: Sequence[str | Path] | None = None
    max_sites: int = 1 << 20
    negf_max_sites: int = 3600
    max_concurrency: int = 0
    max_queue: int = 64
    negf_concurrency: int = 0
    negf_max_queue: int | None = None
    negf_max_work: float | None = None
    max_abs_q: float = DEFAULT_MAX_ABS_Q
    max_streams: int = 32
    stream_idle_timeout_s: float = 300.0
    token: str | None = None
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    grace_s: float = 10.0
    drain_s: float = 0.0
    providers: Sequence[str] | None = None
    intra_op_threads: int | None = None
    param_rtol: float = 1e-6
    negf_pool: str = "process"

    def __post_init__(self) -> None:
        if self.max_concurrency <= 0:
            object.__setattr__(self, "max_concurrency", _default_concurrency())
        if self.negf_concurrency <= 0:
            object.__setattr__(self, "negf_concurrency", self.max_concurrency)
        if self.negf_max_queue is None:
            object.__setattr__(self, "negf_max_queue", self.max_queue)
        if self.negf_max_work is None:
            object.__setattr__(self, "negf_max_work", float(self.negf_max_sites) ** 3)
        for name in ("max_sites", "negf_max_sites", "max_streams"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.negf_max_queue < 0:
            raise ValueError(f"max_queue and negf_max_queue must be >= 0, got {self.max_queue}, "
                             f"{self.negf_max_queue}")
        if not self.negf_max_work >= 1:
            raise ValueError(f"negf_max_work must be >= 1, got {self.negf_max_work}")
        if not 0 < self.max_abs_q <= MAX_ABS_Q_LIMIT:
            raise ValueError(f"max_abs_q must be in (0, {MAX_ABS_Q_LIMIT:g}], got {self.max_abs_q}")
        if not self.stream_idle_timeout_s >= 0:
            raise ValueError(f"stream_idle_timeout_s must be >= 0, got {self.stream_idle_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token (--token / NEQFORCE_TOKEN) is blank (empty or whitespace): set a "
                             "real secret, or unset it for no authentication")
        if self.grace_s < 0 or self.drain_s < 0:
            raise ValueError("grace_s and drain_s must be >= 0")
        if self.negf_pool not in ("process", "thread"):
            raise ValueError(f"negf_pool must be 'process' or 'thread', got {self.negf_pool!r}")
        if not self.param_rtol >= 0:
            raise ValueError(f"param_rtol must be >= 0, got {self.param_rtol}")

    @property
    def max_message_bytes(self) -> int:
        """gRPC send/receive limit: room for FP64 force + density of ``max_sites`` sites."""
        return int(self.max_sites) * BYTES_PER_SITE + MESSAGE_OVERHEAD

    @property
    def grpc_threads(self) -> int:
        """Handler threads: computing + queued calls of both backends + open streams + spare ones for
        health checks and GetServerInfo."""
        return (self.max_concurrency + self.max_queue + self.negf_concurrency + self.negf_max_queue
                + self.max_streams + SPARE_THREADS)

    @property
    def onnx_threads(self) -> int:
        """Intra-op threads for each ONNX Runtime session (0 = ONNX Runtime's default)."""
        if self.intra_op_threads is not None:
            return max(0, int(self.intra_op_threads))
        return max(1, (os.cpu_count() or 1) // self.max_concurrency)

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (reachable from this machine only)."""
    return host in ("127.0.0.1", "localhost", "::1", "[::1]") or host.startswith("127.")
