"""Prometheus metrics of one server (own registry, so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Latency buckets, seconds: sub-millisecond ONNX calls up to minute-long NEGF solves.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
                   60.0, 120.0)


class Metrics:
    """Requests (by method, backend, status code), latency histogram, errors, in-flight and queued calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("neqforce_requests", "Force requests handled (stream messages count singly).",
                                ["method", "backend", "code"], registry=self.registry)
        self.errors = Counter("neqforce_errors", "Requests that ended with a non-OK status.",
                              ["method", "code"], registry=self.registry)
        self.latency = Histogram("neqforce_request_latency_seconds",
                                 "Server-side latency of a force request (decode, queue, compute, encode).",
                                 ["method", "backend"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.sites = Counter("neqforce_sites", "Lattice sites computed.", ["backend"], registry=self.registry)
        self.in_flight = Gauge("neqforce_in_flight", "Requests computing now.", ["backend"],
                               registry=self.registry)
        self.queued = Gauge("neqforce_queued", "Requests waiting for a compute slot.", ["backend"],
                            registry=self.registry)
        self.idle_streams_closed = Counter("neqforce_idle_streams_closed",
                                           "StreamForces calls ended after stream_idle_timeout_s.",
                                           registry=self.registry)
        self.abandoned = Counter("neqforce_negf_abandoned",
                                 "NEGF solves stopped because the client gave up (deadline, cancel, "
                                 "dropped connection).", registry=self.registry)
        self.streams = Gauge("neqforce_open_streams", "Open StreamForces calls.", registry=self.registry)
        self._http = None
        self._children: dict[tuple[str, str, str], tuple] = {}

    def observe(self, method: str, backend: str, code: str, seconds: float, sites: int = 0) -> None:
        key = (method, backend, code)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the updates: keep the children
            children = self._children[key] = (
                self.requests.labels(method, backend, code),
                self.latency.labels(method, backend) if code == "OK" else self.errors.labels(method, code),
                self.sites.labels(backend) if code == "OK" else None)
        requests, latency_or_errors, site_counter = children
        requests.inc()
        if code == "OK":
            latency_or_errors.observe(seconds)
            site_counter.inc(sites)
        else:
            latency_or_errors.inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on host:port (0 = a free port); returns the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
