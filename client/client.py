"""Python client of the neqforce force server (``neqforce.v1.ForceService``): numpy in, numpy out.

    from neqforce.client import ForceClient
    with ForceClient("127.0.0.1:50051") as c:
        r = c.compute_forces(q, params)              # q (lx, ly) or (batch, lx, ly); r.force float64
        with c.stream(params) as s:                  # one bidirectional stream for a BD loop
            for _ in range(n): r = s.compute(q); q = q + dt * r.force + noise

Calls that fail raise :class:`ForceServerError` (code, readable message). Only UNAVAILABLE is retried,
with exponential backoff; every request is an independent, idempotent computation.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neqforce.physics import HolsteinParams
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .interrupt import active, interruptible

BACKENDS = {"auto": pb.BACKEND_AUTO, "onnx": pb.BACKEND_ONNX, "negf": pb.BACKEND_NEGF}
_BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}
_DTYPES = {pb.DATA_TYPE_FP32: np.dtype("<f4"), pb.DATA_TYPE_FP64: np.dtype("<f8")}
_WIRE = {np.dtype("float32"): pb.DATA_TYPE_FP32, np.dtype("float64"): pb.DATA_TYPE_FP64}
#: Backoff of the retries on UNAVAILABLE: BASE * 2**attempt seconds (with ±50 % jitter), at most CAP.
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.1, 2.0


class ForceServerError(RuntimeError):
    """A failed call: ``status`` is the grpc.StatusCode, ``message`` the server's explanation."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status, self.message = status, message

    def code(self) -> grpc.StatusCode:
        """The gRPC status code (same accessor as ``grpc.RpcError``)."""
        return self.status

    def details(self) -> str:
        return self.message

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, target: str) -> ForceServerError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = (err.details() if hasattr(err, "details") else None) or str(err)
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"server {target} unavailable: {details}"
        return cls(code, details)


@dataclass(frozen=True)
class ForceResult:
    """Forces of one request; arrays have the request's shape, (lx, ly) or (batch, lx, ly), float64.

    Attributes:
        force: F_i (units of t per unit Q).
        density: n_i (occupations) when asked for, else None.
        backend: "onnx" or "negf", the backend that ran.
        model: the model that ran ("negf-exact" for NEGF).
        reason: why the server chose that backend.
        parameters: physical parameters the server used (names of docs/physics.md).
        compute_seconds: server-side compute time.
        request_id: the request's tag.
        force_std_max: largest committee spread of the request (force units; 0 exact NEGF, -1 no committee).
        flagged: the answer is not validated (outside the model's domain, or spread above its threshold).
    """

    force: np.ndarray
    density: np.ndarray | None
    backend: str
    model: str
    reason: str
    parameters: dict[str, float]
    compute_seconds: float
    request_id: str = ""
    force_std_max: float = float("nan")
    flagged: bool = False


def parameter_map(params: HolsteinParams | Mapping[str, float]) -> dict[str, float]:
    """Parameters for the wire, named as in docs/physics.md: all fields of a HolsteinParams (lx, ly
    included), or a mapping."""
    if isinstance(params, HolsteinParams):
        return {k: float(v) for k, v in params.to_dict().items()}
    return {str(k): float(v) for k, v in params.items()}


def encode_q(q: np.ndarray, dtype: np.dtype | type = np.float64) -> pb.Tensor:
    """q as a little-endian Tensor (float64 by default: the NEGF backend computes in float64)."""
    arr = np.ascontiguousarray(q, dtype=np.dtype(dtype).newbyteorder("<"))
    return pb.Tensor(shape=arr.shape, dtype=_WIRE[np.dtype(dtype)], raw_contents=arr.tobytes())


def decode(tensor: pb.Tensor) -> np.ndarray:
    """A float64 array (writable copy) of a response Tensor."""
    return np.frombuffer(tensor.raw_contents, dtype=_DTYPES[tensor.dtype]).reshape(tuple(tensor.shape)) \
        .astype(np.float64)


def to_result(response: pb.ComputeForcesResponse) -> ForceResult:
    return ForceResult(force=decode(response.force),
                       density=decode(response.density) if response.HasField("density") else None,
                       backend=_BACKEND_NAMES.get(response.backend, str(response.backend)),
                       model=response.model,
                       reason=response.reason, parameters=dict(response.parameters),
                       compute_seconds=response.compute_seconds, request_id=response.request_id,
                       force_std_max=response.force_std_max, flagged=response.flagged)


def _backend(name: str) -> int:
    try:
        return BACKENDS[name.lower()]
    except KeyError:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}") from None


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.5)


class ForceClient:
    """Connection to a force server at ``target`` ("host:port").

    Args:
        token: bearer token (metadata ``authorization: Bearer <token>``), if the server requires one.
        tls_ca: PEM file of the CA that signed the server certificate (TLS on); ``tls=True`` without it
            uses the system roots.
        tls_server_name: expected name in the server certificate, if it differs from the target host.
        timeout: deadline of each call in seconds (None = none); for streams, of each message.
        retries: how often a call that failed with UNAVAILABLE is retried (exponential backoff).
        dtype: wire type of q; float64 (default) keeps NEGF exact, float32 halves the request size.
    """

    def __init__(self, target: str, *, token: str | None = None, tls_ca: str | Path | None = None,
                 tls: bool = False, tls_server_name: str | None = None, timeout: float | None = 30.0,
                 retries: int = 3, dtype: np.dtype | type = np.float64) -> None:
        self.target, self.timeout, self.retries = target, timeout, max(0, int(retries))
        self.dtype = np.dtype(dtype)
        if self.dtype not in _WIRE:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None or tls:
            roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.ForceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    # --- plumbing ---------------------------------------------------------------------------------------
    def _call(self, method, request, timeout: float | None):
        """Unary call with retries on UNAVAILABLE; the deadline covers all attempts."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if active() is None:
                    return method(request, timeout=remaining, metadata=self.metadata)
                # a CLI job: Ctrl-C cancels the call from another thread instead of raising inside gRPC
                future = method.future(request, timeout=remaining, metadata=self.metadata)
                with interruptible(future.cancel):
                    return future.result()
            except grpc.RpcError as err:
                pause = _backoff(attempt)
                retry = (err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                         and (deadline is None or time.monotonic() + pause < deadline))
                if not retry:
                    raise ForceServerError.from_rpc(err, self.target) from None
                time.sleep(pause)
                attempt += 1

    def request(self, q: np.ndarray, params: HolsteinParams | Mapping[str, float], backend: str = "auto",
                want_density: bool = True, model: str = "", request_id: str = "") -> pb.ComputeForcesRequest:
        """The wire request for q (lx, ly) or (batch, lx, ly)."""
        return pb.ComputeForcesRequest(q=encode_q(q, self.dtype), parameters=parameter_map(params),
                                       backend=_backend(backend), want_density=want_density, model=model,
                                       request_id=request_id)

    # --- API --------------------------------------------------------------------------------------------
    def compute_forces(self, q: np.ndarray, params: HolsteinParams | Mapping[str, float],
                       backend: str = "auto", want_density: bool = True, *, model: str = "",
                       request_id: str = "", timeout: float | None = None) -> ForceResult:
        """Forces (and densities) of q (lx, ly) or (batch, lx, ly) with the given parameters.

        ``backend``: "auto" (a covering model, else exact NEGF), "onnx" or "negf". ``params`` is a
        HolsteinParams (its lx, ly must match q) or a mapping of the names of docs/physics.md.
        """
        request = self.request(q, params, backend, want_density, model, request_id)
        return to_result(self._call(self._stub.ComputeForces, request, timeout))

    def stream(self, params: HolsteinParams | Mapping[str, float], backend: str = "auto",
               want_density: bool = True, *, model: str = "", timeout: float | None = None) -> ForceStream:
        """A bidirectional stream: ``s.compute(q)`` per step, one connection (use as a context manager)."""
        timeout = self.timeout if timeout is None else timeout
        return ForceStream(self, params, backend, want_density, model, timeout)

    def server_info(self, timeout: float | None = None) -> dict:
        """Version, backends, models with the parameters each covers, limits, routing, providers."""
        info = self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        models = [{"name": m.name, "path": m.path, "sha256": m.sha256, "params": dict(m.parameters),
                   "descriptor": m.descriptor_name,
                   "metrics": json.loads(m.metrics_json) if m.metrics_json else {},
                   "dataset_sha256": m.dataset_sha256, "version": m.model_version,
                   "execution_providers": list(m.execution_providers),
                   "domain": {r.name: [r.min, r.max] for r in m.domain},
                   "force_std_threshold": m.force_std_threshold,
                   "metallic_columns_max": (m.metallic_columns_max if m.HasField("metallic_columns_max")
                                            else None),
                   "cdw_remnant": ({"metallic_columns_over": m.cdw_remnant.metallic_columns_over,
                                    "non_metallic_columns_min": m.cdw_remnant.non_metallic_columns_min}
                                   if m.HasField("cdw_remnant") else None)} for m in info.models]
        backends = [{"backend": _BACKEND_NAMES.get(b.backend, str(b.backend)), "available": b.available,
                     "detail": b.detail, "execution_providers": list(b.execution_providers)}
                    for b in info.backends]
        lim = info.limits
        return {"name": info.name, "version": info.version, "api": info.api, "target": self.target,
                "auth_required": info.auth_required, "backends": backends, "models": models,
                "limits": {"max_sites": lim.max_sites, "negf_max_sites": lim.negf_max_sites,
                           "max_concurrency": lim.max_concurrency, "max_queue": lim.max_queue,
                           "max_message_bytes": lim.max_message_bytes,
                           "negf_concurrency": lim.negf_concurrency, "negf_max_queue": lim.negf_max_queue,
                           "negf_max_work": lim.negf_max_work, "max_abs_q": lim.max_abs_q,
                           "stream_idle_timeout_s": lim.stream_idle_timeout_s},
                "routing": {"rtol": info.routing.rtol}, "default_parameters": dict(info.default_parameters),
                "execution_providers": sorted({p for b in backends for p in b["execution_providers"]})}

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """Standard gRPC health status of ``service`` ("" = the server): "SERVING", "NOT_SERVING", ..."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            raise ForceServerError.from_rpc(err, self.target) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected; ForceServerError(UNAVAILABLE) after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ForceServerError(grpc.StatusCode.UNAVAILABLE,
                                   f"server {self.target} not reachable within {timeout} s") from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ForceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class _Watchdog:
    """Cancels the armed call when its per-message deadline passes (one thread per stream)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._call = None
        self._deadline: float | None = None
        self._closed = False
        self.fired = False
        threading.Thread(target=self._run, daemon=True, name="neqforce-stream-watchdog").start()

    def arm(self, call, seconds: float) -> None:
        with self._cond:
            self._call, self._deadline, self.fired = call, time.monotonic() + seconds, False
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self.fired, self._deadline = True, None
                self._call.cancel()


class ForceStream:
    """One StreamForces call: every ``compute(q)`` sends one request and waits for its response.

    Messages are independent, so after UNAVAILABLE the stream is reopened and the message resent
    (up to ``client.retries`` times). ``timeout`` bounds each message (the call is cancelled after it).
    """

    def __init__(self, client: ForceClient, params: HolsteinParams | Mapping[str, float], backend: str,
                 want_density: bool, model: str, timeout: float | None) -> None:
        self.client, self.timeout = client, timeout
        self._template = pb.ComputeForcesRequest(parameters=parameter_map(params), backend=_backend(backend),
                                                 want_density=want_density, model=model)
        self._requests: queue.SimpleQueue | None = None
        self._responses: Iterator | None = None
        self._watchdog = _Watchdog() if timeout is not None else None
        self.messages = 0

    def _open(self) -> None:
        self._requests = queue.SimpleQueue()
        self._responses = self.client._stub.StreamForces(iter(self._requests.get, _END),
                                                         metadata=self.client.metadata)

    def _drop(self) -> None:
        if self._requests is not None:
            self._requests.put(_END)
        if self._responses is not None:
            self._responses.cancel()
        self._requests = self._responses = None

    def compute(self, q: np.ndarray, request_id: str = "") -> ForceResult:
        """Forces of q (lx, ly) or (batch, lx, ly) with the stream's parameters and backend."""
        request = pb.ComputeForcesRequest()
        request.CopyFrom(self._template)
        request.q.CopyFrom(encode_q(q, self.client.dtype))
        request.request_id = request_id
        with interruptible(self.abort):  # Ctrl-C: the call is cancelled, KeyboardInterrupt raised after
            return self._compute(request)

    def abort(self) -> None:
        """Cancel the call in flight (thread-safe: for Ctrl-C handling and watchdogs)."""
        responses = self._responses
        if responses is not None:
            responses.cancel()

    def _compute(self, request: pb.ComputeForcesRequest) -> ForceResult:
        attempt = 0
        while True:
            if self._responses is None:
                self._open()
            self._requests.put(request)
            if self._watchdog is not None:
                self._watchdog.arm(self._responses, self.timeout)
            try:
                response = next(self._responses)
            except StopIteration:
                self._drop()
                raise ForceServerError(grpc.StatusCode.UNAVAILABLE, "stream closed by the server") from None
            except grpc.RpcError as err:
                fired = self._watchdog is not None and self._watchdog.fired
                self._drop()
                if fired:
                    raise ForceServerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           f"no response within {self.timeout} s") from None
                if err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.client.retries:
                    time.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise ForceServerError.from_rpc(err, self.client.target) from None
            finally:
                if self._watchdog is not None:
                    self._watchdog.disarm()
            self.messages += 1
            return to_result(response)

    def close(self) -> None:
        """End the stream (half-close, then cancel whatever is left)."""
        if self._requests is not None:
            self._requests.put(_END)
            try:
                with interruptible(self.abort):
                    for _ in self._responses:  # the server ends the call once it sees the half-close
                        pass
            except (grpc.RpcError, ValueError):  # ValueError: interrupted mid-read (Ctrl-C)
                self._responses.cancel()
        self._requests = self._responses = None
        if self._watchdog is not None:
            self._watchdog.close()

    def cancel(self) -> None:
        """Abandon the stream at once (Ctrl-C, errors): no waiting for the server to answer."""
        requests, responses = self._requests, self._responses
        self._requests = self._responses = None
        if requests is not None:
            requests.put(_END)
        if responses is not None:
            responses.cancel()
        if self._watchdog is not None:
            self._watchdog.close()

    def __enter__(self) -> ForceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
