"""ONNX Runtime backend: a loaded SPEC §9 surrogate model (input ``q``, outputs ``force`` and ``density``).

Optional parts of the contract (docs/physics.md): input ``voltage`` float32 [batch] (fed from the
request's voltage), output ``force_std`` (committee spread, same shape as force) with its calibrated
threshold in metadata ``neqforce.committee``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from neqforce.hashing import sha256_file
from neqforce.physics import PHYSICAL_FIELDS

from ..logs import log_event
from .integrity import check_integrity

log = logging.getLogger("neqforce.server.onnx")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PARAMS_KEY = "neqforce.params"
#: Metadata key of the validity domain: JSON ``{"ranges": {name: [min, max]}, ...}`` (docs/ml_model.md).
DOMAIN_KEY = "neqforce.domain"
#: Names a domain may range over: the physical parameters and the lattice size.
DOMAIN_NAMES = (*PHYSICAL_FIELDS, "lx", "ly")
#: Optional global inputs beside ``q`` (float32 [batch]) and the request parameter feeding each.
GLOBAL_INPUTS = {"voltage": "voltage"}
#: Metadata key of a committee: JSON ``{"members": M, "spread_threshold": float | null, ...}``.
COMMITTEE_KEY = "neqforce.committee"
#: Metadata key, "true" when the export checked that every lattice of a batch gets the floats it gets alone
#: (neqforce.training.export.check_batch_invariance); ``neqforce sweep`` then evaluates several per call.
BATCH_INVARIANT_KEY = "neqforce.batch_invariant"


def parse_spread_threshold(text: str | None, path: Path) -> float | None:
    """``spread_threshold`` of metadata ``neqforce.committee`` (force units), None when absent or null."""
    if not text:
        return None
    try:
        value = json.loads(text).get("spread_threshold")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: metadata '{COMMITTEE_KEY}' must be a JSON object: {exc}") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise ValueError(f"{path}: metadata '{COMMITTEE_KEY}': spread_threshold must be a number >= 0")
    return float(value)


def default_providers() -> list[str]:
    """CUDA then CPU when ONNX Runtime was built with CUDA, else CPU only."""
    return [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]


def parse_model_params(text: str | None, path: Path) -> dict[str, float]:
    """The physical parameters of metadata ``neqforce.params`` (all of PHYSICAL_FIELDS, nothing else)."""
    if text is None:
        raise ValueError(f"{path}: metadata '{PARAMS_KEY}' missing (SPEC §9)")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata '{PARAMS_KEY}' is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: metadata '{PARAMS_KEY}' must be a JSON object")
    unknown = sorted(set(raw) - set(PHYSICAL_FIELDS))
    missing = sorted(set(PHYSICAL_FIELDS) - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: metadata '{PARAMS_KEY}' has unknown {unknown} / missing {missing} fields")
    return {name: float(raw[name]) for name in PHYSICAL_FIELDS}


def parse_domain(text: str | None, path: Path) -> dict[str, tuple[float, float]]:
    """Ranged parameters {name: (min, max)} of metadata ``neqforce.domain`` (empty when absent).

    Parameters not listed are fixed at their ``neqforce.params`` value; lx and ly are unconstrained when
    absent (models exported before the domain existed). ValueError on a malformed domain.
    """
    if not text:
        return {}
    try:
        raw = json.loads(text)
        ranges = raw["ranges"]
        out = {str(name): (float(lo), float(hi)) for name, (lo, hi) in ranges.items()}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: metadata '{DOMAIN_KEY}' must be JSON "
                         f"{{\"ranges\": {{name: [min, max]}}}}: {exc}") from None
    bad = sorted(n for n, (lo, hi) in out.items() if n not in DOMAIN_NAMES or not lo <= hi)
    if bad:
        raise ValueError(f"{path}: metadata '{DOMAIN_KEY}' has unknown names or empty ranges: {bad}")
    return out


def _metallic_bound(value: Any, path: Path, where: str) -> int:
    """``value`` as a metallic-column bound: an integer >= 0, else ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path}: {where}: metallic_columns_max must be an integer >= 0")
    return value


def parse_metallic_max(text: str | None, path: Path) -> int | None:
    """``metallic_columns_max`` of ``neqforce.domain``: the most metallic columns (SPEC ξ·lx) of the
    configurations the model was validated on, or None (not declared). ValueError when malformed."""
    if not text:
        return None
    value = json.loads(text).get("metallic_columns_max")
    return None if value is None else _metallic_bound(value, path, f"metadata '{DOMAIN_KEY}'")


#: Key of the domain's CDW-remnant rule: ``{"metallic_columns_over": a, "non_metallic_columns_min": b}``.
REMNANT_KEY = "cdw_remnant"


def _remnant_rule(value: Any, path: Path, where: str) -> tuple[int, int]:
    """``value`` as a CDW-remnant rule (metallic_columns_over, non_metallic_columns_min), else ValueError."""
    shape = f"{REMNANT_KEY} must be {{\"metallic_columns_over\": a, \"non_metallic_columns_min\": b}}"
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where}: {shape}, got {type(value).__name__}")
    try:
        over, keep = value["metallic_columns_over"], value["non_metallic_columns_min"]
    except KeyError as exc:
        raise ValueError(f"{path}: {where}: {shape}: missing {exc}") from None
    extra = set(value) - {"metallic_columns_over", "non_metallic_columns_min", "basis"}
    if extra:
        raise ValueError(f"{path}: {where}: {REMNANT_KEY} has unknown fields {sorted(extra)}")
    for name, v in (("metallic_columns_over", over), ("non_metallic_columns_min", keep)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{path}: {where}: {REMNANT_KEY}.{name} must be an integer >= 0")
    return over, keep


def parse_remnant(text: str | None, path: Path) -> tuple[int, int] | None:
    """The CDW-remnant rule of ``neqforce.domain`` (``cdw_remnant``): a lattice holding more than
    ``metallic_columns_over`` metallic columns is inside the domain only while at least
    ``non_metallic_columns_min`` of its columns are not metallic — a long metallic domain next to a short
    CDW remnant at the right electrode is a regime the model's error was measured outside of
    (docs/ml_model.md, "60×28: the stall is real"). None when not declared; ValueError when malformed."""
    if not text:
        return None
    value = json.loads(text).get(REMNANT_KEY)
    return None if value is None else _remnant_rule(value, path, f"metadata '{DOMAIN_KEY}'")


def provenance_record(path: Path, sha256: str) -> dict[str, Any] | None:
    """The provenance file next to the model (``compact.json`` for ``compact.onnx``) when it describes
    these exact bytes (same sha256), else None. Its ``domain`` is how the shipped model, exported before
    ``neqforce.domain`` existed, declares its domain without new bytes; its ``domain_restriction`` narrows
    the declared domain after export (for example by a blind evaluation), so the evaluated bytes, and
    their hash, stay unchanged."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("sha256") == sha256 else None


def restrict_domain(text: str | None, restriction: dict[str, Any] | None, path: Path) -> str | None:
    """The domain JSON text ``text`` narrowed by ``restriction`` (``{"ranges": {name: [min, max]},
    "metallic_columns_max": n, "cdw_remnant": {...}}``, each optional): ranges intersected, the smaller
    metallic bound kept, of two remnant rules the smaller metallic length and the longer remnant.
    A restriction can only narrow; ValueError when it is malformed or leaves a range empty."""
    if not restriction:
        return text
    base = json.loads(text) if text else {"ranges": {}}
    ranges = dict(base.get("ranges", {}))
    card = path.with_suffix(".json").name
    try:
        for name, (lo, hi) in restriction.get("ranges", {}).items():
            if name not in ranges:
                raise ValueError(f"'{name}' is not a ranged parameter of the model: nothing to narrow")
            old_lo, old_hi = ranges[name]
            ranges[name] = [max(float(lo), float(old_lo)), min(float(hi), float(old_hi))]
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: domain_restriction of {card} must be "
                         f"{{\"ranges\": {{name: [min, max]}}}} over ranged parameters: {exc}") from None
    empty = sorted(n for n, (lo, hi) in ranges.items() if lo > hi)
    if empty:
        raise ValueError(f"{path}: domain_restriction of {card} leaves no values of {empty}")
    out = {**base, "ranges": ranges}
    limit = restriction.get("metallic_columns_max")
    if limit is not None:
        limit = _metallic_bound(limit, path, f"domain_restriction of {card}")
        old = base.get("metallic_columns_max")
        out["metallic_columns_max"] = limit if old is None else min(limit, int(old))
    rule = restriction.get(REMNANT_KEY)
    if rule is not None:  # stricter of the two: the smaller metallic length, the longer remnant
        over, keep = _remnant_rule(rule, path, f"domain_restriction of {card}")
        if base.get(REMNANT_KEY) is not None:
            old_over, old_keep = _remnant_rule(base[REMNANT_KEY], path, f"metadata '{DOMAIN_KEY}'")
            over, keep = min(over, old_over), max(keep, old_keep)
        out[REMNANT_KEY] = {"metallic_columns_over": over, "non_metallic_columns_min": keep}
    return json.dumps(out)


def _session(path: Path, providers: Sequence[str], threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # a GPU provider that fails to initialise: fall back to the CPU
        if list(providers) == [CPU]:
            raise
        log_event(log, logging.WARNING, "onnx_provider_fallback", model=str(path), requested=list(providers),
                  error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])


@dataclass
class OnnxModel:
    """One loaded model. ``run`` is thread-safe (ONNX Runtime sessions are)."""

    name: str
    path: Path
    sha256: str
    params: dict[str, float]
    metadata: dict[str, str]
    session: ort.InferenceSession = field(repr=False)
    #: Ranged parameters {name: (min, max)} of the validity domain (``neqforce.domain``); empty = none.
    domain: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Most metallic columns validated (``neqforce.domain`` ``metallic_columns_max``); None = not declared.
    metallic_columns_max: int | None = None
    #: CDW-remnant rule (metallic_columns_over, non_metallic_columns_min) of ``neqforce.domain``; None = none.
    cdw_remnant: tuple[int, int] | None = None
    #: Global inputs the graph declares (names of GLOBAL_INPUTS, e.g. ["voltage"]).
    global_inputs: list[str] = field(default_factory=list)
    #: Whether the graph outputs the committee spread ``force_std``.
    committee: bool = False
    #: Calibrated committee spread threshold (force units, ``neqforce.committee``); None = none.
    spread_threshold: float | None = None

    @classmethod
    def load(cls, path: str | Path, name: str, providers: Sequence[str] | None = None,
             threads: int = 0) -> OnnxModel:
        """Load, check the SPEC §9 contract, warm up. ValueError when the file breaks the contract."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        requested = list(providers) if providers else default_providers()
        try:
            session = _session(path, requested, threads)
        except Exception as exc:
            raise ValueError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if "q" not in inputs or len(inputs["q"].shape) != 3 or inputs["q"].type != "tensor(float)":
            raise ValueError(f"{path}: needs input 'q' float32 [batch, lx, ly] (SPEC §9), "
                             f"has {[(i.name, i.type, i.shape) for i in inputs.values()]}")
        extra = [i for name, i in inputs.items() if name != "q"]
        bad = [(i.name, i.type, i.shape) for i in extra
               if i.name not in GLOBAL_INPUTS or len(i.shape) != 1 or i.type != "tensor(float)"]
        if bad:
            raise ValueError(f"{path}: unknown or malformed inputs {bad}: beside 'q' a model may take only "
                             f"{sorted(GLOBAL_INPUTS)}, each float32 [batch] (docs/physics.md)")
        if not {"force", "density"} <= set(outputs):
            raise ValueError(f"{path}: needs outputs 'force' and 'density' (SPEC §9), has {sorted(outputs)}")
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        sha256 = sha256_file(path)
        card = provenance_record(path, sha256) or {}
        declared = metadata.get(DOMAIN_KEY)
        if not declared and "domain" in card:
            declared = json.dumps(card["domain"])
        restriction = card.get("domain_restriction")
        domain_text = restrict_domain(declared, restriction if isinstance(restriction, dict) else None, path)
        domain = parse_domain(domain_text, path)
        model = cls(name=name, path=path, sha256=sha256,
                    params=parse_model_params(metadata.get(PARAMS_KEY), path), metadata=metadata,
                    session=session, domain=domain,
                    metallic_columns_max=parse_metallic_max(domain_text, path),
                    cdw_remnant=parse_remnant(domain_text, path),
                    global_inputs=sorted(i.name for i in extra), committee="force_std" in outputs,
                    spread_threshold=parse_spread_threshold(metadata.get(COMMITTEE_KEY), path))
        # warm-up (the first run allocates) on the reference lattice; sha256 and output vs the references
        check_integrity(path, model.sha256, metadata, lambda q: model.run(q, want_density=True),
                        model.providers[0])
        taken = session.get_providers()
        if requested[0] not in taken:
            log_event(log, logging.WARNING, "onnx_provider_unavailable", model=name, requested=requested,
                      providers=taken)
        log_event(log, logging.INFO, "model_loaded", model=name, path=str(path), providers=taken,
                  threads=threads, params=model.params)
        return model

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return list(self.session.get_providers())

    def feeds(self, q: np.ndarray, params: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Graph inputs: ``q`` float32 and each declared global input from ``params`` (default: the
        model's own ``neqforce.params`` value), broadcast over the batch."""
        q32 = q if q.dtype == np.float32 else q.astype(np.float32)
        feeds = {"q": q32}
        for name in self.global_inputs:
            value = (params or self.params).get(GLOBAL_INPUTS[name], self.params[GLOBAL_INPUTS[name]])
            feeds[name] = np.full(q32.shape[0], value, dtype=np.float32)
        return feeds

    def run(self, q: np.ndarray, want_density: bool,
            params: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(force, density or None), float32 (batch, lx, ly), for q (batch, lx, ly) (any float dtype);
        global inputs (voltage) from ``params`` (default: the model's parameters)."""
        force, density, _ = self.evaluate(q, want_density, params)
        return force, density

    def evaluate(self, q: np.ndarray, want_density: bool, params: dict[str, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(force, density or None, force_std or None): :meth:`run` plus the committee spread, always
        computed when the graph outputs it (the server reports its maximum on every answer)."""
        names = ["force"] + (["density"] if want_density else []) + (["force_std"] if self.committee else [])
        out = dict(zip(names, self.session.run(names, self.feeds(q, params)), strict=True))
        return out["force"], out.get("density"), out.get("force_std")

    def covers(self, params: dict[str, float], rtol: float) -> list[str]:
        """Names of the fixed parameters (not ranged in ``domain``) outside
        |request - model| <= rtol * max(1, |model|) (empty = covered)."""
        return [name for name, value in self.params.items()
                if name not in self.domain and not abs(params[name] - value) <= rtol * max(1.0, abs(value))]

    def outside(self, values: dict[str, float]) -> list[str]:
        """Names of the ranged parameters of ``domain`` whose value lies outside [min, max] (empty = inside).
        ``values`` holds the physical parameters and lx, ly."""
        return [name for name, (lo, hi) in self.domain.items() if not lo <= values[name] <= hi]


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """File stems, made unique with a numeric suffix (``compact``, ``compact-2``)."""
    names: list[str] = []
    for path in paths:
        stem, candidate, i = Path(path).stem, Path(path).stem, 1
        while candidate in names:
            i += 1
            candidate = f"{stem}-{i}"
        names.append(candidate)
    return names
