"""Request parameters and backend routing (AUTO | ONNX | NEGF).

A model covers a request when every physical parameter p satisfies
``|p_request - p_model| <= rtol * max(1, |p_model|)`` (rtol = ``ServerConfig.param_rtol``, 1e-6 by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from neqforce.physics import PHYSICAL_FIELDS, HolsteinParams
from neqforce.v1 import force_service_pb2 as pb

from .backends.negf import NEGF_MODEL
from .backends.onnx import OnnxModel
from .errors import RequestError, exhausted, invalid, precondition

BACKEND_NAMES = {pb.BACKEND_AUTO: "auto", pb.BACKEND_ONNX: "onnx", pb.BACKEND_NEGF: "negf"}


def resolve_parameters(values: Mapping[str, float], lx: int, ly: int) -> HolsteinParams:
    """HolsteinParams of a request's parameter map; omitted names take SPEC §4 defaults.

    INVALID_ARGUMENT for unknown names, lx/ly that disagree with q, or values HolsteinParams rejects.
    """
    unknown = sorted(set(values) - set(PHYSICAL_FIELDS) - {"lx", "ly"})
    if unknown:
        raise invalid(f"unknown parameter(s) {unknown}; known: {sorted(PHYSICAL_FIELDS)} (and lx, ly)")
    for name, size in (("lx", lx), ("ly", ly)):
        if name in values and values[name] != size:
            raise invalid(f"parameter {name}={values[name]:g} disagrees with q's shape ({name} = {size})")
    try:
        return HolsteinParams(lx=lx, ly=ly, **{k: v for k, v in values.items() if k in PHYSICAL_FIELDS})
    except ValueError as exc:
        raise invalid(f"invalid parameters: {exc}") from None


@dataclass(frozen=True)
class Route:
    """Where a request goes and why (``reason`` is returned to the client)."""

    backend: int
    model: OnnxModel | None
    reason: str

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else NEGF_MODEL


def _mismatch(model: OnnxModel, params: dict[str, float], rtol: float) -> str:
    names = model.covers(params, rtol)
    return ", ".join(f"{n}={params[n]:g} (model {model.params[n]:g})" for n in names)


def route(params: HolsteinParams, requested: int, model_name: str, models: Mapping[str, OnnxModel],
          rtol: float, negf_max_sites: int) -> Route:
    """Choose the backend for one request (see the module docstring for the tolerance)."""
    if requested not in BACKEND_NAMES:
        raise invalid(f"unknown backend {requested}; use BACKEND_AUTO, BACKEND_ONNX or BACKEND_NEGF")
    if model_name and model_name not in models:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"no loaded model named '{model_name}'; loaded: {sorted(models) or 'none'}")
    n_sites = params.lx * params.ly
    negf_fits = n_sites <= negf_max_sites
    cap = f"lattice {params.lx}x{params.ly} = {n_sites} sites is over negf_max_sites = {negf_max_sites}"
    if requested == pb.BACKEND_NEGF:
        if model_name:
            raise invalid(f"model '{model_name}' given with BACKEND_NEGF; models apply to ONNX and AUTO")
        if not negf_fits:
            raise exhausted(f"NEGF requested but {cap} (its cost grows as N^3)")
        return Route(pb.BACKEND_NEGF, None, "NEGF requested")

    physical = params.physical()
    candidates = [models[model_name]] if model_name else list(models.values())
    covering = next((m for m in candidates if not m.covers(physical, rtol)), None)
    tol = f"every parameter within {rtol:g}*max(1,|value|)"
    if covering is not None:
        asked = "ONNX requested; " if requested == pb.BACKEND_ONNX else ""
        reason = f"{asked}model '{covering.name}' covers the parameters ({tol})"
        return Route(pb.BACKEND_ONNX, covering, reason)
    if candidates:
        closest = min(candidates, key=lambda m: len(m.covers(physical, rtol)))
        why = f"no loaded model covers the parameters (closest '{closest.name}': " \
              f"{_mismatch(closest, physical, rtol)}; tolerance: {tol})"
    else:
        why = "no ONNX model is loaded"
    if requested == pb.BACKEND_ONNX:
        raise precondition(f"ONNX requested but {why}")
    if not negf_fits:
        raise exhausted(f"{why}, and the NEGF fallback refuses it: {cap}")
    return Route(pb.BACKEND_NEGF, None, f"{why}; exact NEGF")
