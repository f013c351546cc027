"""Request parameters and backend routing (AUTO | ONNX | NEGF).

A model covers a request when every fixed physical parameter p satisfies
``|p_request - p_model| <= rtol * max(1, |p_model|)`` (rtol = ``ServerConfig.param_rtol``, 1e-6 by default)
and every ranged parameter of its validity domain (metadata ``neqforce.domain``: lx, ly, possibly V …)
lies in [min, max]. AUTO uses only covering models, else exact NEGF; the reason names the parameters
outside. Explicit ONNX: a fixed-parameter mismatch is FAILED_PRECONDITION (other physics); a request whose
fixed parameters match but a ranged one lies outside is answered, and its reason starts with
``OUTSIDE_DOMAIN`` (an extrapolation the model was not validated for, see docs/nonlocality.md).
A model may also declare ``metallic_columns_max`` and a ``cdw_remnant`` rule: an ONNX answer on a
configuration with more metallic columns, or with a long metallic domain and a CDW remnant shorter than the
rule's, gets ``OUTSIDE_DOMAIN`` appended to its reason (:func:`flag_configuration`, after the compute).
Every answer outside the validated domain is also ``flagged`` (response field). A committee model with a
calibrated spread threshold (``neqforce.committee``): an answer whose largest per-site spread exceeds it
goes to exact NEGF under AUTO when NEGF accepts the lattice, else it is flagged ``HIGH_SPREAD``
(:func:`spread_check`, after the compute).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from neqforce.physics import (
    PHYSICAL_FIELDS,
    HolsteinParams,
    bulk_cdw_amplitude,
    neighbour_sum,
    staggered_sign,
)
from neqforce.v1 import force_service_pb2 as pb

from .backends.negf import NEGF_MODEL
from .backends.onnx import OnnxModel
from .errors import RequestError, exhausted, invalid, precondition
from .text import clip, clip_names

BACKEND_NAMES = {pb.BACKEND_AUTO: "auto", pb.BACKEND_ONNX: "onnx", pb.BACKEND_NEGF: "negf"}


def resolve_parameters(values: Mapping[str, float], lx: int, ly: int) -> HolsteinParams:
    """HolsteinParams of a request's parameter map; omitted names take SPEC §4 defaults.

    INVALID_ARGUMENT for unknown names, lx/ly that disagree with q, or values HolsteinParams rejects.
    """
    unknown = sorted(set(values) - set(PHYSICAL_FIELDS) - {"lx", "ly"})
    if unknown:
        raise invalid(f"unknown parameter(s) {clip_names(unknown)}; known: {sorted(PHYSICAL_FIELDS)} "
                      "(and lx, ly)")
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
    #: The answer is not validated (outside the model's domain, or committee spread above threshold).
    flagged: bool = False

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else NEGF_MODEL


#: First word of the reason of an explicit ONNX request answered outside the model's validity domain.
OUTSIDE_DOMAIN = "OUTSIDE_DOMAIN"


def _mismatch(model: OnnxModel, params: dict[str, float], rtol: float) -> str:
    names = model.covers(params, rtol)
    return ", ".join(f"{n}={params[n]:g} (model {model.params[n]:g})" for n in names)


def _outside(model: OnnxModel, values: dict[str, float]) -> str:
    return ", ".join(f"{n}={values[n]:g} outside [{model.domain[n][0]:g}, {model.domain[n][1]:g}]"
                     for n in model.outside(values))


def _misfit(model: OnnxModel, physical: dict[str, float], values: dict[str, float], rtol: float) -> str:
    """Every parameter that keeps ``model`` from covering the request, fixed and ranged ('' = covered)."""
    return "; ".join(text for text in (_mismatch(model, physical, rtol), _outside(model, values)) if text)


def route(params: HolsteinParams, requested: int, model_name: str, models: Mapping[str, OnnxModel],
          rtol: float, negf_max_sites: int) -> Route:
    """Choose the backend for one request (see the module docstring for the tolerance)."""
    if requested not in BACKEND_NAMES:
        raise invalid(f"unknown backend {requested}; use BACKEND_AUTO, BACKEND_ONNX or BACKEND_NEGF")
    if model_name and model_name not in models:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"no loaded model named '{clip(model_name)}'; loaded: {sorted(models) or 'none'}")
    n_sites = params.lx * params.ly
    negf_fits = n_sites <= negf_max_sites
    cap = f"lattice {params.lx}x{params.ly} = {n_sites} sites is over negf_max_sites = {negf_max_sites}"
    if requested == pb.BACKEND_NEGF:
        if model_name:
            raise invalid(f"model '{clip(model_name)}' given with BACKEND_NEGF; models apply to ONNX "
                          "and AUTO")
        if not negf_fits:
            raise exhausted(f"NEGF requested but {cap} (its cost grows as N^3)")
        return Route(pb.BACKEND_NEGF, None, "NEGF requested")

    physical = params.physical()
    values = {**physical, "lx": float(params.lx), "ly": float(params.ly)}
    candidates = [models[model_name]] if model_name else list(models.values())
    covering = next((m for m in candidates if not m.covers(physical, rtol) and not m.outside(values)), None)
    tol = f"fixed parameters within {rtol:g}*max(1,|value|), ranged ones inside the model's domain"
    asked = "ONNX requested; " if requested == pb.BACKEND_ONNX else ""
    if covering is not None:
        reason = f"{asked}model '{covering.name}' covers the parameters ({tol})"
        return Route(pb.BACKEND_ONNX, covering, reason)
    if requested == pb.BACKEND_ONNX:
        matching = next((m for m in candidates if not m.covers(physical, rtol)), None)
        if matching is not None:  # physics matches; lattice size or another ranged parameter outside
            reason = f"{OUTSIDE_DOMAIN}: ONNX requested; model '{matching.name}' answers outside its " \
                     f"validated domain ({_outside(matching, values)}): an extrapolation, not validated"
            return Route(pb.BACKEND_ONNX, matching, reason, flagged=True)
    if candidates:
        closest = min(candidates, key=lambda m: (len(m.covers(physical, rtol)), len(m.outside(values))))
        why = f"no loaded model covers the parameters (closest '{closest.name}': " \
              f"{_misfit(closest, physical, values, rtol)}; needed: {tol})"
    else:
        why = "no ONNX model is loaded"
    if requested == pb.BACKEND_ONNX:
        raise precondition(f"ONNX requested but {why}")
    if not negf_fits:
        raise exhausted(f"{why}, and the NEGF fallback refuses it: {cap}")
    return Route(pb.BACKEND_NEGF, None, f"{why}; exact NEGF")


@functools.lru_cache(maxsize=16)
def _order_weights(lx: int, ly: int) -> tuple[np.ndarray, np.ndarray]:
    """(s/2, s/(2·count)): local order m = s/2·Q − s/(2·count)·Σ_nn Q (physics.local_order), float32."""
    sign = staggered_sign(lx, ly)
    count = neighbour_sum(np.ones((lx, ly)))
    return (sign / 2.0).astype(np.float32), (sign / (2.0 * count)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _q0_bulk(params: HolsteinParams) -> float:
    return bulk_cdw_amplitude(params)


def _metallic(q: np.ndarray, q0_bulk: float) -> np.ndarray:
    """Metallic columns (batch, lx) of q (batch, lx, ly): mean_y |m| < q0_bulk / 2 (as metallic_columns)."""
    a, b = _order_weights(*q.shape[-2:])
    return np.abs(a * q - b * neighbour_sum(q)).mean(axis=-1) < 0.5 * q0_bulk


def metallic_column_count(q: np.ndarray, q0_bulk: float) -> np.ndarray:
    """Metallic columns per lattice of a batch (batch, lx, ly) (SPEC ξ·lx)."""
    return np.count_nonzero(_metallic(q, q0_bulk), axis=-1)


def _first_outside(model: OnnxModel, lx: int) -> int | None:
    """Fewest metallic columns that put a lattice of ``lx`` columns outside ``model``'s configuration
    domain, or None when no count can. Both rules are thresholds on the count: more than
    ``metallic_columns_max``, or more than ``metallic_columns_over`` while fewer than
    ``non_metallic_columns_min`` columns stay non-metallic (the CDW-remnant rule)."""
    firsts = []
    if model.metallic_columns_max is not None:
        firsts.append(model.metallic_columns_max + 1)
    if model.cdw_remnant is not None:
        over, keep = model.cdw_remnant
        firsts.append(max(over + 1, lx - keep + 1))
    first = min(firsts, default=lx + 1)
    return first if first <= lx else None


def _outside_why(model: OnnxModel, lx: int, worst: int) -> str:
    """Which rule a lattice of ``lx`` columns with ``worst`` metallic ones breaks, in words."""
    parts = []
    if model.metallic_columns_max is not None and worst > model.metallic_columns_max:
        parts.append(f"validated up to {model.metallic_columns_max} (a longer metallic domain, or touchdown "
                     "at the right electrode, than the model's error was measured on; docs/nonlocality.md)")
    if model.cdw_remnant is not None:
        over, keep = model.cdw_remnant
        if worst > over and lx - worst < keep:
            parts.append(f"only {lx - worst} non-metallic: with more than {over} metallic columns the model "
                         f"was validated only where at least {keep} columns of CDW remain (a long metallic "
                         "domain next to a short CDW remnant; docs/ml_model.md)")
    return "; ".join(parts)


def flag_configuration(chosen: Route, q: np.ndarray, params: HolsteinParams) -> Route:
    """``chosen`` with ``OUTSIDE_DOMAIN`` appended to its reason when an ONNX model answers a lattice
    (inside its lattice domain) whose metallic columns put it outside the configurations its error was
    measured on: more than ``metallic_columns_max`` (touchdown at the right electrode, where the exact
    force is nonlocal; docs/nonlocality.md), or a long metallic domain next to a CDW remnant shorter than
    its ``cdw_remnant`` rule allows. O(N) on the request, only for models declaring a rule; otherwise
    ``chosen`` itself."""
    model = chosen.model
    if model is None or chosen.reason.startswith(OUTSIDE_DOMAIN):
        return chosen
    lx = q.shape[-2]
    first = _first_outside(model, lx)
    if first is None:
        return chosen
    q0_bulk = _q0_bulk(params)
    k = lx - first + 1  # with `first` or more metallic columns any k columns hold one: check the last k
    if k + 1 < lx and not _metallic(q[..., lx - k - 1:, :], q0_bulk)[..., 1:].any():  # (+1 for neighbours)
        return chosen
    worst = int(np.max(metallic_column_count(q, q0_bulk)))
    if worst < first:
        return chosen
    return dataclasses.replace(chosen, reason=f"{chosen.reason}; {OUTSIDE_DOMAIN}: {worst} metallic columns, "
                               f"{_outside_why(model, lx, worst)}", flagged=True)


#: Word in the reason of an ONNX answer whose committee spread exceeds the model's calibrated threshold.
HIGH_SPREAD = "HIGH_SPREAD"


def spread_check(chosen: Route, requested: int, std_max: float, negf_refusal: str | None) -> Route:
    """After an ONNX answer with committee spread ``std_max`` (largest per-site spread, force units):
    ``chosen`` itself when the model has no calibrated threshold or the spread is within it; over it, an
    exact-NEGF route when the request was AUTO and NEGF accepts it (``negf_refusal`` None), otherwise
    ``chosen`` flagged, its reason saying why (``negf_refusal``: why NEGF refuses the request)."""
    model = chosen.model
    if model is None or model.spread_threshold is None or not std_max > model.spread_threshold:
        return chosen
    why = (f"committee spread {std_max:.3g} above the calibrated threshold {model.spread_threshold:.3g} "
           f"of model '{model.name}' (force units)")
    if requested == pb.BACKEND_AUTO and negf_refusal is None:
        return Route(pb.BACKEND_NEGF, None, f"{why}; exact NEGF")
    instead = "ONNX requested" if requested == pb.BACKEND_ONNX else f"no NEGF fallback: {negf_refusal}"
    return dataclasses.replace(chosen, reason=f"{chosen.reason}; {HIGH_SPREAD}: {why}: not validated "
                               f"({instead})", flagged=True)
