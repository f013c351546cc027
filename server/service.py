"""The ``neqforce.v1.ForceService`` servicer: validate, route, admit, compute, encode."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np

from neqforce import __version__
from neqforce.physics import HolsteinParams
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

from .admission import POLL_S, Admission
from .backends.negf import NegfBackend
from .backends.onnx import OnnxModel
from .config import ServerConfig
from .errors import RequestError, invalid
from .logs import log_event
from .metrics import Metrics
from .routing import BACKEND_NAMES, Route, resolve_parameters, route
from .tensors import decode_q, encode

log = logging.getLogger("neqforce.server.service")

MAX_REQUEST_ID = 128
#: Resolved parameters and routes kept for repeated requests (a BD loop sends the same ones every step).
ROUTE_CACHE_SIZE = 256


def _deadline_error(context: grpc.ServicerContext, where: str) -> RequestError:
    if not context.is_active():
        return RequestError(grpc.StatusCode.CANCELLED, f"call cancelled by the client {where}")
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded {where}")


def _expired(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return (remaining is not None and remaining <= 0) or not context.is_active()


class ForceServicer(pb_grpc.ForceServiceServicer):
    """Stateless request handling over shared backends; one instance per server."""

    def __init__(self, cfg: ServerConfig, models: Mapping[str, OnnxModel], negf: NegfBackend,
                 metrics: Metrics) -> None:
        self.cfg, self.models, self.negf, self.metrics = cfg, dict(models), negf, metrics
        self.admission = Admission(cfg.max_concurrency, cfg.max_queue, metrics)
        self._streams = 0
        self._lock = threading.Lock()
        self._info = self._build_info()
        self._routes: dict[tuple, tuple[HolsteinParams, Route, dict[str, float]]] = {}

    # --- RPCs -------------------------------------------------------------------------------------------
    def ComputeForces(self, request: pb.ComputeForcesRequest, context: grpc.ServicerContext):  # noqa: N802
        return self._handle(request, context, "ComputeForces")

    def StreamForces(self, request_iterator: Iterator[pb.ComputeForcesRequest],  # noqa: N802
                     context: grpc.ServicerContext):
        with self._lock:
            if self._streams >= self.cfg.max_streams:
                self.metrics.observe("StreamForces", "none", "RESOURCE_EXHAUSTED", 0.0)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many open streams (max_streams = {self.cfg.max_streams})")
            self._streams += 1
            self.metrics.streams.set(self._streams)
        try:
            for request in request_iterator:
                yield self._handle(request, context, "StreamForces")
        finally:
            with self._lock:
                self._streams -= 1
                self.metrics.streams.set(self._streams)

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext):  # noqa: N802
        self.metrics.observe("GetServerInfo", "none", "OK", 0.0)
        return self._info

    # --- request handling -------------------------------------------------------------------------------
    def _handle(self, request: pb.ComputeForcesRequest, context: grpc.ServicerContext,
                method: str) -> pb.ComputeForcesResponse:
        start = time.perf_counter()
        label = "none"
        try:
            response, label, sites = self._compute(request, context)
        except RequestError as err:
            self.metrics.observe(method, label, err.code.name, time.perf_counter() - start)
            log_event(log, logging.WARNING, "request_failed", method=method, code=err.code.name,
                      message=err.message, request_id=request.request_id[:MAX_REQUEST_ID],
                      peer=context.peer())
            context.abort(err.code, err.message)
        except Exception as exc:  # a bug or a solver failure must not take the server down
            self.metrics.observe(method, label, "INTERNAL", time.perf_counter() - start)
            log.exception("internal error in %s", method)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - start
        self.metrics.observe(method, label, "OK", elapsed, sites)
        log_event(log, logging.DEBUG, "request", method=method, backend=label, model=response.model,
                  shape=list(response.force.shape), ms=round(1e3 * elapsed, 3),
                  request_id=response.request_id)
        return response

    def _compute(self, request: pb.ComputeForcesRequest,
                 context: grpc.ServicerContext) -> tuple[pb.ComputeForcesResponse, str, int]:
        if len(request.request_id) > MAX_REQUEST_ID:
            raise invalid(f"request_id longer than {MAX_REQUEST_ID} characters")
        if not request.HasField("q"):
            raise invalid("q is missing")
        q, shape = decode_q(request.q, self.cfg.max_sites)
        params, chosen, physical = self._resolve(request, q.shape[1], q.shape[2])
        if _expired(context):
            raise _deadline_error(context, "before the computation started")
        if not self.admission.acquire(context.time_remaining, context.is_active):
            raise _deadline_error(context, "while waiting in the queue")
        t0 = time.perf_counter()
        if chosen.backend == pb.BACKEND_ONNX:
            try:
                force, density = chosen.model.run(q, request.want_density)
            finally:
                self.admission.release()
        else:
            force, density = self._run_negf(q, params, context)
        compute_s = time.perf_counter() - t0
        if _expired(context):
            raise _deadline_error(context, f"after {compute_s:.3f} s of computation")
        response = self._response(request, chosen, physical, shape, force,
                                  density if request.want_density else None, compute_s)
        return response, BACKEND_NAMES[chosen.backend], int(q.size)

    def _resolve(self, request: pb.ComputeForcesRequest, lx: int,
                 ly: int) -> tuple[HolsteinParams, Route, dict[str, float]]:
        """Parameters, route and echoed parameter map of a request, cached (routing is a pure function of
        these inputs and the fixed set of models; invalid requests raise and are not cached)."""
        key = (tuple(sorted(request.parameters.items())), lx, ly, request.backend, request.model)
        hit = self._routes.get(key)
        if hit is None:
            params = resolve_parameters(request.parameters, lx, ly)
            chosen = route(params, request.backend, request.model, self.models, self.cfg.param_rtol,
                           self.cfg.negf_max_sites)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            hit = self._routes[key] = (params, chosen, params.physical())
        return hit

    def _run_negf(self, q: np.ndarray, params: HolsteinParams,
                  context: grpc.ServicerContext) -> tuple[np.ndarray, np.ndarray]:
        """NEGF on the worker pool; the slot is released when the work ends, even after a deadline."""
        try:
            future: Future = self.negf.submit(q, params)
        except RuntimeError:  # pool shut down
            self.admission.release()
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down") from None
        future.add_done_callback(lambda _f: self.admission.release())
        while True:
            remaining = context.time_remaining()
            wait = POLL_S if remaining is None else max(0.0, min(POLL_S, remaining))
            try:
                return future.result(timeout=wait)
            except FutureTimeout:
                if _expired(context):
                    future.cancel()
                    raise _deadline_error(context, "during the NEGF computation") from None
            except CancelledError:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down") from None

    @staticmethod
    def _response(request: pb.ComputeForcesRequest, chosen: Route, physical: dict[str, float],
                  shape: tuple[int, ...], force: np.ndarray, density: np.ndarray | None,
                  compute_s: float) -> pb.ComputeForcesResponse:
        response = pb.ComputeForcesResponse(
            force=encode(force, shape), backend=chosen.backend, model=chosen.model_name, reason=chosen.reason,
            parameters=physical, compute_seconds=compute_s, request_id=request.request_id)
        if density is not None:
            response.density.CopyFrom(encode(density, shape))
        return response

    # --- metadata ---------------------------------------------------------------------------------------
    def _build_info(self) -> pb.GetServerInfoResponse:
        import onnxruntime as ort

        cfg = self.cfg
        providers = sorted({p for m in self.models.values() for p in m.providers})
        backends = [
            pb.BackendInfo(backend=pb.BACKEND_ONNX, available=bool(self.models),
                           detail=f"ONNX Runtime {ort.__version__}, {len(self.models)} model(s), "
                                  f"{cfg.onnx_threads} intra-op thread(s)",
                           execution_providers=providers),
            pb.BackendInfo(backend=pb.BACKEND_NEGF, available=True,
                           detail="exact wide-band NEGF (neqforce.physics.electron_density), "
                                  "float64, O(N^3)"),
        ]
        models = [pb.ModelInfo(name=m.name, path=m.path.name, sha256=m.sha256, parameters=m.params,
                               descriptor_name=m.metadata.get("neqforce.descriptor", ""),
                               metrics_json=m.metadata.get("neqforce.metrics", ""),
                               dataset_sha256=m.metadata.get("neqforce.dataset_sha256", ""),
                               model_version=m.metadata.get("neqforce.version", ""),
                               execution_providers=m.providers,
                               domain=[pb.ParameterRange(name=n, min=lo, max=hi)
                                       for n, (lo, hi) in m.domain.items()])
                  for m in self.models.values()]
        limits = pb.Limits(max_sites=cfg.max_sites, negf_max_sites=cfg.negf_max_sites,
                           max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue,
                           max_message_bytes=cfg.max_message_bytes)
        defaults = HolsteinParams().physical()
        return pb.GetServerInfoResponse(name="neqforce", version=__version__, api="neqforce.v1",
                                        backends=backends, models=models, limits=limits,
                                        routing=pb.RoutingPolicy(rtol=cfg.param_rtol),
                                        default_parameters=defaults, auth_required=cfg.token is not None)


