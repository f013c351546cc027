"""Write an exported model again with the current inference graph, same weights (``neqforce reexport``).

Models exported before package 0.5.3 evaluate the first layer by gathering the (2 r_c + 1)² square of every
site and multiplying it by one matrix ``w_big`` per member; 0.5.3 writes three convolutions instead
(:mod:`neqforce.training.folded`): the same function, 1.5–1.7× cheaper per lattice in ONNX Runtime. The old
graph holds every folded weight (``members.<i>.w_big``, ``b1``, ``w_elec``, ``w_glob``, ``ws``, ``bs``), so
the members' checkpoints are not needed: this module rebuilds a :class:`FoldedEnsemble` from them, checks
that ``w_big`` has the mirror structure the new graph relies on (pair weights equal on the sum block,
opposite on the difference block), exports it, and checks the new file against the old one with ONNX
Runtime on random and dynamics-like lattices (force, density and force_std within ``tol`` of the largest
|force|, float32 rounding), measures its batch invariance again, recomputes its reference answer and keeps
every other metadata entry (the committee's threshold included: the spread is the same function); the
source's hash goes into ``neqforce.reexport``. The file is written atomically (``neqforce.atomic``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from neqforce import __version__
from neqforce.atomic import atomic_path
from neqforce.hashing import sha256_file

from .calibration import SPREAD_DEFINITION
from .descriptors import offsets
from .export import (
    BATCH_INVARIANT_KEY,
    COMMITTEE_KEY,
    REFERENCE_KEY,
    _add_metadata,
    _reference_answer,
    check_batch_invariance,
    onnx_feeds,
    random_lattices,
    write_graph,
)
from .folded import FoldedEnsemble
from .idealized import dynamics_like_lattices
from .model import ModelConfig, build_model

#: Metadata entry of a re-exported model: {"from_sha256", "from_version", "by", "graph"}.
REEXPORT_KEY = "neqforce.reexport"
#: The inference graph this package writes (``FirstLayer`` convolutions).
GRAPH = "conv/1"
#: Tolerance of the check against the source, relative to max(1, max |F|): float32 rounding is ~1e-6.
TOL = 1e-5


def _initializers(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def folded_from_onnx(path: str | os.PathLike[str]) -> tuple[FoldedEnsemble, dict[str, str]]:
    """The :class:`FoldedEnsemble` of an ONNX model written by the gather graph (package < 0.5.3), and its
    metadata. ValueError when the file is not such a model."""
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        params = json.loads(meta["neqforce.params"])
        arch = json.loads(meta["neqforce.architecture"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: no neqforce metadata ({exc}); not a neqforce model") from None
    if REEXPORT_KEY in meta or "members.0.w_big" not in _initializers(proto):
        raise ValueError(f"{path} already has the current inference graph (or not the gather graph of "
                         "package < 0.5.3): nothing to re-export")
    configs = [ModelConfig.from_dict(c) for c in arch.get("ensemble", [arch])]
    ens = FoldedEnsemble([build_model(c, params) for c in configs]).eval()
    init = _initializers(proto)
    with torch.no_grad():
        for i, (member, cfg) in enumerate(zip(ens.members, configs, strict=True)):
            def get(name: str, shape: tuple[int, ...] | None = None, i: int = i) -> torch.Tensor:
                key = f"members.{i}.{name}"
                if key not in init:
                    if shape is not None and 0 in shape:  # an empty weight is not stored
                        return torch.zeros(shape)
                    raise ValueError(f"{path}: weight {key} missing")
                return torch.from_numpy(init[key].astype(np.float32).copy())

            off = offsets(cfg.r_cut)
            n_line, n_pair = len(off.line), len(off.top)
            h = member.hidden
            w_big = get("w_big")
            if w_big.shape != (len(member.w_a) + h + 1, n_line + 2 * n_pair):
                raise ValueError(f"{path}: members.{i}.w_big has shape {tuple(w_big.shape)}, not that of "
                                 f"its architecture {cfg.to_dict()}")
            top, bottom = w_big[:, n_line:n_line + n_pair], w_big[:, n_line + n_pair:]
            if not (torch.equal(top[:h], bottom[:h]) and torch.equal(top[h:], -bottom[h:])
                    and not w_big[h:, :n_line].any()):
                raise ValueError(f"{path}: members.{i}.w_big lacks the mirror structure of a folded model")
            member.w_ls.copy_(w_big[:h, :n_line + n_pair])
            member.w_a.copy_(top[h:-1])
            member.b1.copy_(get("b1").reshape(-1))
            member.w_elec.copy_(get("w_elec", tuple(member.w_elec.shape)))
            member.w_glob.copy_(get("w_glob", tuple(member.w_glob.t().shape)).t())
            if member.n_quad:
                member.w_quad.copy_(get("w_quad"))
            for j in range(len(member.ws)):
                member.ws[j].copy_(get(f"ws.{j}"))
                member.bs[j].copy_(get(f"bs.{j}"))
    ens.refold()
    return ens, meta


def _session(path: str | os.PathLike[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare(src: str | os.PathLike[str], new: str | os.PathLike[str], seed: int = 0) -> float:
    """Largest |new − src| / max(1, max |F|) over every output, on random lattices (several shapes, a
    chain and ly = 1 included) and dynamics-like ones (walls, metallic domains), voltages in [2, 4]."""
    a, b = _session(src), _session(new)
    names = [o.name for o in a.get_outputs()]
    if names != [o.name for o in b.get_outputs()]:
        raise ValueError(f"outputs differ: {names} vs {[o.name for o in b.get_outputs()]}")
    rng = np.random.default_rng(seed)
    cases = [random_lattices(s, rng) for s in ((3, 8, 6), (2, 30, 28), (1, 5, 1), (2, 7, 3), (1, 80, 28))]
    cases += [dynamics_like_lattices(lx, ly, 4, rng).astype(np.float32) for lx, ly in ((30, 28), (120, 28))]
    worst = 0.0
    for q in cases:
        v = rng.uniform(2.0, 4.0, size=len(q)).astype(np.float32)
        ra, rb = a.run(names, onnx_feeds(a, q, v)), b.run(names, onnx_feeds(b, q, v))
        scale = max(1.0, float(np.abs(ra[0]).max()))
        err = max(float(np.abs(x - y).max()) for x, y in zip(ra, rb, strict=True)) / scale
        if not np.isfinite(err):
            raise ValueError(f"non-finite output on {q.shape}")
        worst = max(worst, err)
    return worst


def reexport(src: str | os.PathLike[str], out: str | os.PathLike[str],
             tol: float = TOL) -> tuple[Path, float]:
    """Write ``src`` with the current inference graph to ``out``; returns (path, largest relative difference
    of any output from the source's, see :func:`compare`)."""
    import onnx

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ValueError(f"model file not found: {src}")
    ens, meta = folded_from_onnx(src)
    old = onnx.load(str(src))
    # an ensemble exported without a spread (package < 0.3: the mean only) stays without one
    ens.committee = "force_std" in [o.name for o in old.graph.output]
    committee = json.loads(meta[COMMITTEE_KEY]) if COMMITTEE_KEY in meta else None
    if ens.committee and (committee or {}).get("spread_definition") != SPREAD_DEFINITION:
        raise ValueError(f"{src}: its committee spread predates package 0.5.2; run `neqforce respread` "
                         "first (the new graph computes the current spread)")
    with atomic_path(out) as path:  # a temporary file beside ``out``, renamed over it at the end
        tmp = str(path)
        write_graph(ens, tmp)
        proto = onnx.load(tmp)
        proto.doc_string = old.doc_string
        del proto.metadata_props[:]
        keep = {k: v for k, v in meta.items() if k not in (REFERENCE_KEY, BATCH_INVARIANT_KEY)}
        arch = json.loads(keep["neqforce.architecture"])
        configs = [ModelConfig.from_dict(c) for c in arch.get("ensemble", [arch])]
        arch["graph_macs_per_site"] = sum(c.graph_macs_per_site() for c in configs)
        keep["neqforce.architecture"] = json.dumps(arch, sort_keys=True)
        keep[REEXPORT_KEY] = json.dumps({"from_sha256": sha256_file(src),
                                         "from_version": meta.get("neqforce.version", ""), "by": __version__,
                                         "graph": GRAPH}, sort_keys=True)
        _add_metadata(proto, keep)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        err = compare(src, tmp)
        if not err <= tol:
            raise ValueError(f"the re-exported graph differs from {src} by {err:.2e} (> {tol:.0e}): "
                             "not written")
        voltage = float(json.loads(meta["neqforce.params"]).get("voltage", 3.0))
        _add_metadata(proto, {REFERENCE_KEY: _reference_answer(tmp, voltage),
                              BATCH_INVARIANT_KEY: json.dumps(check_batch_invariance(tmp))})
        onnx.save(proto, tmp)
    return out, err
