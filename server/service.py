"""The ``neqforce.v1.ForceService`` servicer: validate, route, admit, compute, check, encode."""

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
from .backends.negf import NegfAbandoned, NegfBackend, NegfError, NegfSolverError
from .backends.onnx import OnnxModel
from .config import ServerConfig
from .errors import RequestError, exhausted, invalid
from .logs import log_event
from .metrics import Metrics
from .routing import BACKEND_NAMES, Route, flag_configuration, resolve_parameters, route, spread_check
from .tensors import count_non_finite, decode_q, encode
from .text import MAX_MESSAGE, clip

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


def end_call(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End a call from another thread with a status (the handler may be blocked reading the next
    message). gRPC's public API can only cancel (status CANCELLED); the status-carrying cancel of the
    underlying call object is used when this grpcio has it."""
    try:
        from grpc._cython import cygrpc

        context._rpc_event.call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), details)
    except (AttributeError, ImportError, TypeError):
        context.cancel()


class _OpenStream:
    """Book-keeping of one StreamForces call for the idle watchdog."""

    __slots__ = ("context", "last", "busy", "expired")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context, self.last, self.busy, self.expired = context, time.monotonic(), False, False


class ForceServicer(pb_grpc.ForceServiceServicer):
    """Stateless request handling over shared backends; one instance per server.

    Each backend has its own admission (slots + queue): ``onnx_admission`` (``max_concurrency``,
    ``max_queue``) and ``negf_admission`` (``negf_concurrency``, ``negf_max_queue``), so ML requests never
    wait behind NEGF work. A watchdog thread ends streams idle for ``stream_idle_timeout_s``.
    """

    def __init__(self, cfg: ServerConfig, models: Mapping[str, OnnxModel], negf: NegfBackend,
                 metrics: Metrics) -> None:
        self.cfg, self.models, self.negf, self.metrics = cfg, dict(models), negf, metrics
        self.onnx_admission = Admission("onnx", cfg.max_concurrency, cfg.max_queue, metrics)
        self.negf_admission = Admission("negf", cfg.negf_concurrency, cfg.negf_max_queue, metrics)
        self._streams: set[_OpenStream] = set()
        self._lock = threading.Lock()
        self._handling = 0  # requests inside _handle (computing, or reporting how they ended)
        self._handled = threading.Condition(self._lock)
        self._info = self._build_info()
        self._routes: dict[tuple, tuple[HolsteinParams, Route, dict[str, float]]] = {}
        self._closed = threading.Event()
        if cfg.stream_idle_timeout_s > 0:
            threading.Thread(target=self._watch_idle_streams, daemon=True, name="stream-idle").start()

    def close(self) -> None:
        """Stop the idle-stream watchdog (on server shutdown)."""
        self._closed.set()

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every request has finished handling (and logging) except ONNX
        Runtime calls still computing, which cannot be interrupted. On shutdown, after the NEGF workers are
        killed, so that the requests they fail report before ``shutdown_complete``. True when settled."""
        deadline = time.monotonic() + timeout
        with self._handled:
            while self._handling > self.onnx_admission.active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._handled.wait(min(left, 0.05))  # ONNX slots are released elsewhere: poll too
        return True

    @property
    def computing(self) -> int:
        """Requests computing now (both backends)."""
        return self.onnx_admission.active + self.negf_admission.active

    # --- RPCs -------------------------------------------------------------------------------------------
    def ComputeForces(self, request: pb.ComputeForcesRequest, context: grpc.ServicerContext):  # noqa: N802
        return self._handle(request, context, "ComputeForces")

    def StreamForces(self, request_iterator: Iterator[pb.ComputeForcesRequest],  # noqa: N802
                     context: grpc.ServicerContext):
        stream = _OpenStream(context)
        with self._lock:
            if len(self._streams) >= self.cfg.max_streams:
                self.metrics.observe("StreamForces", "none", "RESOURCE_EXHAUSTED", 0.0)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many open streams (max_streams = {self.cfg.max_streams})")
            self._streams.add(stream)
            self.metrics.streams.set(len(self._streams))
        try:
            requests = iter(request_iterator)
            while True:
                try:
                    request = next(requests)
                except StopIteration:
                    return
                except grpc.RpcError:  # the call ended: client cancelled or gone, or idle timeout
                    return
                stream.busy = True
                response = self._handle(request, context, "StreamForces")
                stream.last, stream.busy = time.monotonic(), False
                yield response
        finally:
            with self._lock:
                self._streams.discard(stream)
                self.metrics.streams.set(len(self._streams))

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext):  # noqa: N802
        self.metrics.observe("GetServerInfo", "none", "OK", 0.0)
        return self._info

    def _watch_idle_streams(self) -> None:
        timeout = self.cfg.stream_idle_timeout_s
        while not self._closed.wait(min(1.0, timeout / 4)):
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self._streams if not s.busy and not s.expired and now - s.last > timeout]
                for stream in idle:
                    stream.expired = True
            for stream in idle:
                self.metrics.idle_streams_closed.inc()
                log_event(log, logging.INFO, "stream_idle_timeout", peer=clip(stream.context.peer()),
                          idle_s=round(now - stream.last, 1))
                end_call(stream.context, grpc.StatusCode.UNAVAILABLE,
                         f"stream idle for more than {timeout:g} s (stream_idle_timeout_s): closed by the "
                         "server; open a new stream")

    # --- request handling -------------------------------------------------------------------------------
    def _handle(self, request: pb.ComputeForcesRequest, context: grpc.ServicerContext,
                method: str) -> pb.ComputeForcesResponse:
        with self._handled:
            self._handling += 1
        try:
            return self._handle_counted(request, context, method)
        finally:
            with self._handled:
                self._handling -= 1
                self._handled.notify_all()

    def _handle_counted(self, request: pb.ComputeForcesRequest, context: grpc.ServicerContext,
                        method: str) -> pb.ComputeForcesResponse:
        start = time.perf_counter()
        label = "none"
        try:
            response, label, sites = self._compute(request, context)
        except RequestError as err:
            message = clip(err.message, MAX_MESSAGE)
            self.metrics.observe(method, label, err.code.name, time.perf_counter() - start)
            log_event(log, logging.WARNING, "request_failed", method=method, code=err.code.name,
                      message=message, request_id=clip(request.request_id, MAX_REQUEST_ID),
                      peer=clip(context.peer()))
            context.abort(err.code, message)
        except Exception as exc:  # a bug must not take the server down
            self.metrics.observe(method, label, "INTERNAL", time.perf_counter() - start)
            log.exception("internal error in %s", method)
            context.abort(grpc.StatusCode.INTERNAL, clip(f"internal error: {type(exc).__name__}: {exc}",
                                                         MAX_MESSAGE))
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
        q, shape = decode_q(request.q, self.cfg.max_sites, self.cfg.max_abs_q)
        params, chosen, physical = self._resolve(request, q.shape[1], q.shape[2])
        if chosen.backend == pb.BACKEND_NEGF and (refusal := self._negf_work_refusal(q)):
            raise exhausted(refusal)
        force, density, std, compute_s = self._run_backend(chosen, q, params, physical, request, context)
        std_max = 0.0 if std is None and chosen.model is None else -1.0 if std is None else float(std.max())
        if chosen.model is not None:  # flags: a configuration beyond the model's metallic length; spread
            chosen = flag_configuration(chosen, q, params)
            over_cap = params.lx * params.ly > self.cfg.negf_max_sites
            refusal = (f"lattice {params.lx}x{params.ly} is over negf_max_sites = {self.cfg.negf_max_sites}"
                       if over_cap else self._negf_work_refusal(q))
            checked = spread_check(chosen, request.backend, std_max, refusal)
            if checked.backend == pb.BACKEND_NEGF:  # committee spread over threshold: exact NEGF instead
                force, density, std, more_s = self._run_backend(checked, q, params, physical, request,
                                                                context)
                compute_s, std_max = compute_s + more_s, 0.0
            chosen = checked
        response = self._response(request, chosen, physical, shape, force, density, compute_s)
        response.force_std_max, response.flagged = std_max, chosen.flagged
        if std is not None and request.want_force_std:
            response.force_std.CopyFrom(encode(std, shape))
        return response, BACKEND_NAMES[chosen.backend], int(q.size)

    def _negf_work_refusal(self, q: np.ndarray) -> str | None:
        """Why the NEGF work cap refuses q (batch x N^3 over negf_max_work), or None."""
        batch, lx, ly = q.shape
        work = batch * float(lx * ly) ** 3
        if work <= self.cfg.negf_max_work:
            return None
        return (f"NEGF work of this request is batch {batch} x ({lx}x{ly} sites)^3 = {work:.3g}, over this "
                f"server's negf_max_work = {self.cfg.negf_max_work:.3g} (NEGF costs O(N^3) per lattice): "
                "send fewer or smaller lattices per request")

    def _run_backend(self, chosen: Route, q: np.ndarray, params: HolsteinParams, physical: dict[str, float],
                     request: pb.ComputeForcesRequest, context: grpc.ServicerContext
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
        """(force, density or None, committee spread or None, compute seconds) from the routed backend,
        through its admission; the model is fed the request's parameters (its global inputs, e.g. V)."""
        negf = chosen.backend == pb.BACKEND_NEGF
        admission = self.negf_admission if negf else self.onnx_admission
        if _expired(context):
            raise _deadline_error(context, "before the computation started")
        if not admission.acquire(context.time_remaining, context.is_active):
            raise _deadline_error(context, "while waiting in the queue")
        t0 = time.perf_counter()
        std = None
        if negf:
            force, density = self._run_negf(q, params, context)
        else:
            try:
                force, density, std = chosen.model.evaluate(q, request.want_density, physical)
            finally:
                admission.release()
        compute_s = time.perf_counter() - t0
        if _expired(context):
            raise _deadline_error(context, f"after {compute_s:.3f} s of computation")
        if not request.want_density:
            density = None
        self._check_finite(chosen, force, density, std)
        return force, density, std, compute_s

    @staticmethod
    def _check_finite(chosen: Route, force: np.ndarray, density: np.ndarray | None,
                      std: np.ndarray | None = None) -> None:
        """INTERNAL (never OK) when a backend returns NaN/Inf for a validated, finite input."""
        for name, array in (("force", force), ("density", density), ("force_std", std)):
            bad = 0 if array is None else count_non_finite(array)
            if bad:
                backend = f"{BACKEND_NAMES[chosen.backend]} ({chosen.model_name})"
                raise RequestError(grpc.StatusCode.INTERNAL,
                                   f"backend {backend} returned {bad} non-finite {name} value(s) of "
                                   f"{array.size} for a finite q within the "
                                   "accepted range: no answer is sent (the model may be broken)")

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
        """NEGF on the worker pool. The slot is released when the job ends; a job whose client gave up
        (deadline, cancel, dropped connection) is stopped at once: cancelled if queued, its worker
        process killed (and restarted) if running."""
        try:
            future: Future = self.negf.submit(q, params)
        except RuntimeError:  # pool shut down
            self.negf_admission.release()
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down") from None
        future.add_done_callback(lambda _f: self.negf_admission.release())
        while True:
            remaining = context.time_remaining()
            wait = POLL_S if remaining is None else max(0.0, min(POLL_S, remaining))
            try:
                return future.result(timeout=wait)
            except FutureTimeout:
                if _expired(context):
                    error = _deadline_error(context, "during the NEGF computation")
                    if self.negf.abandon(future, error.message):
                        self.metrics.abandoned.inc()
                    raise error from None
            except (CancelledError, NegfAbandoned):
                if _expired(context):
                    raise _deadline_error(context, "during the NEGF computation") from None
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down") from None
            except NegfSolverError as exc:
                raise invalid(f"the NEGF solver cannot compute this input ({exc}); q and the parameters "
                              "passed validation, but are outside what the solver handles") from None
            except NegfError as exc:
                raise RequestError(grpc.StatusCode.INTERNAL, str(exc)) from None

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
                                  f"float64, O(N^3); {cfg.negf_concurrency} worker(s) ({cfg.negf_pool}), "
                                  f"queue {cfg.negf_max_queue}"),
        ]
        models = [pb.ModelInfo(name=m.name, path=m.path.name, sha256=m.sha256, parameters=m.params,
                               descriptor_name=m.metadata.get("neqforce.descriptor", ""),
                               metrics_json=m.metadata.get("neqforce.metrics", ""),
                               dataset_sha256=m.metadata.get("neqforce.dataset_sha256", ""),
                               model_version=m.metadata.get("neqforce.version", ""),
                               execution_providers=m.providers,
                               domain=[pb.ParameterRange(name=n, min=lo, max=hi)
                                       for n, (lo, hi) in m.domain.items()],
                               force_std_threshold=m.spread_threshold or 0.0,
                               metallic_columns_max=m.metallic_columns_max,
                               cdw_remnant=None if m.cdw_remnant is None else pb.CdwRemnantRule(
                                   metallic_columns_over=m.cdw_remnant[0],
                                   non_metallic_columns_min=m.cdw_remnant[1]))
                  for m in self.models.values()]
        limits = pb.Limits(max_sites=cfg.max_sites, negf_max_sites=cfg.negf_max_sites,
                           max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue,
                           max_message_bytes=cfg.max_message_bytes, negf_max_work=cfg.negf_max_work,
                           stream_idle_timeout_s=cfg.stream_idle_timeout_s, max_abs_q=cfg.max_abs_q,
                           negf_concurrency=cfg.negf_concurrency, negf_max_queue=cfg.negf_max_queue)
        defaults = HolsteinParams().physical()
        return pb.GetServerInfoResponse(name="neqforce", version=__version__, api="neqforce.v1",
                                        backends=backends, models=models, limits=limits,
                                        routing=pb.RoutingPolicy(rtol=cfg.param_rtol),
                                        default_parameters=defaults, auth_required=cfg.token is not None)


