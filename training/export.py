"""ONNX export of a trained force model (SPEC §9 contract) with a built-in ONNX Runtime check.

The exported graph is :class:`~neqforce.training.folded.FoldedForceModel`: input ``q`` float32
[batch, lx, ly] (all dynamic), outputs ``force`` and ``density`` of the same shape; the descriptor,
the network and the exact elastic term are all inside the graph. Metadata (``metadata_props``):
``neqforce.params``, ``neqforce.descriptor``, ``neqforce.metrics``, ``neqforce.dataset_sha256``,
``neqforce.version`` (SPEC §9), plus ``neqforce.architecture``, ``neqforce.training`` and
``neqforce.domain`` (JSON: the validity domain, see :func:`model_domain`) and ``neqforce.reference``
(JSON: the model's answer on a fixed lattice, checked by the server at load).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from neqforce import __version__

from .checkpoint import load_model
from .folded import FoldedEnsemble, FoldedForceModel
from .model import EnsembleForceModel, ForceModel

OPSET = 18
#: Lattices (batch, lx, ly) of the export check: small, odd, wide-in-y, a chain and the default.
CHECK_SHAPES = ((3, 8, 6), (1, 13, 10), (2, 30, 28), (1, 5, 1), (2, 7, 3))
CHECK_TOL = 1e-5


def model_domain(ck: dict) -> dict:
    """Validity domain of a model trained from checkpoint ``ck`` (metadata ``neqforce.domain``): the
    lattice it was trained and tested on as ranges of lx and ly; every physical parameter is fixed at
    ``neqforce.params`` (the model takes only q). The server's AUTO routing uses it (docs/ml_model.md)."""
    lx, ly = (int(v) for v in ck["lattice"])
    return {"ranges": {"lx": [lx, lx], "ly": [ly, ly]},
            "basis": f"training and test trajectories on {lx}x{ly} at the fixed parameters"}


def model_metadata(ck: dict) -> dict[str, str]:
    """The metadata_props of a model exported from checkpoint ``ck`` (all values strings)."""
    from .model import ModelConfig

    cfg = ModelConfig.from_dict(ck["config"])
    training = {k: ck.get(k) for k in ("train_ids", "test_ids", "lattice", "options", "epochs_run",
                                        "torch_version")}
    members = [ModelConfig.from_dict(c) for c in ck.get("ensemble", [ck["config"]])]
    macs = {"macs_per_site": sum(m.macs_per_site() for m in members),
            "graph_macs_per_site": sum(m.graph_macs_per_site() for m in members)}
    arch = {**cfg.to_dict(), **macs}
    if len(members) > 1:
        arch = {"ensemble": [m.to_dict() for m in members], "members": len(members), **macs}
    return {
        "neqforce.params": json.dumps(ck["params"], sort_keys=True),
        "neqforce.descriptor": (cfg.descriptor_name if len(members) == 1 else
                                "ensemble[" + ", ".join(m.descriptor_name for m in members) + "]"),
        "neqforce.metrics": json.dumps(ck.get("metrics", {}), sort_keys=True),
        "neqforce.dataset_sha256": str(ck.get("dataset_sha256", "")),
        "neqforce.dataset_complete": json.dumps(bool(ck.get("dataset_complete", False))),
        "neqforce.version": __version__,
        "neqforce.architecture": json.dumps(arch, sort_keys=True),
        "neqforce.training": json.dumps(training, sort_keys=True),
        "neqforce.domain": json.dumps(model_domain(ck), sort_keys=True),
    }


def random_lattices(shape: tuple[int, int, int], rng: np.random.Generator, q0: float = 2.4) -> np.ndarray:
    """Random configurations like the dynamics visits: a CDW checkerboard ±q0 whose local amplitude
    varies from site to site between 0 (metal) and 1.2 q0, plus Gaussian noise of 0.3; float32."""
    b, lx, ly = shape
    stag = (-1.0) ** (np.arange(lx)[:, None] + np.arange(ly)[None, :])
    amp = rng.uniform(0.0, 1.2, size=shape)
    return (q0 * stag * amp + 0.3 * rng.standard_normal(shape)).astype(np.float32)


def check_onnx(path: str | os.PathLike[str], model: ForceModel, shapes=CHECK_SHAPES, tol: float = CHECK_TOL,
               seed: int = 0) -> float:
    """Largest |ORT - torch| / max(1, max|F|) over force and density on :func:`random_lattices`;
    raises ValueError above ``tol`` (float32 rounding of O(1) forces is ~1e-6)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in shapes:
        q = random_lattices(shape, rng)
        f_ort, n_ort = sess.run(["force", "density"], {"q": q})
        with torch.no_grad():
            f_t, n_t = model(torch.from_numpy(q))
        scale = max(1.0, float(np.abs(f_t.numpy()).max()))
        err = max(float(np.abs(f_ort - f_t.numpy()).max()), float(np.abs(n_ort - n_t.numpy()).max())) / scale
        if f_ort.shape != shape or not np.isfinite(err) or err > tol:
            raise ValueError(f"ONNX check failed on {shape}: max |ORT - torch| = {err:.2e} > {tol:.0e}")
        worst = max(worst, err)
    return worst


def export_onnx(model: ForceModel, out: str | os.PathLike[str], metadata: dict[str, str] | None = None,
                check: bool = True) -> tuple[Path, float]:
    """Write ``model`` as ONNX (atomic rename) with metadata; returns (path, max ORT-vs-torch error)."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if isinstance(model, EnsembleForceModel):
        folded: torch.nn.Module = FoldedEnsemble(list(model.members)).eval()
    else:
        folded = FoldedForceModel(model).eval()
    axes = {"q": {0: "batch", 1: "lx", 2: "ly"}, "force": {0: "batch", 1: "lx", 2: "ly"},
            "density": {0: "batch", 1: "lx", 2: "ly"}}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the TorchScript exporter handles the symbolic (lx, ly) index arithmetic of the descriptor
            torch.onnx.export(folded, (torch.zeros(2, 8, 6),), tmp, input_names=["q"],
                              output_names=["force", "density"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
        proto = onnx.load(tmp)
        proto.doc_string = ("neqforce surrogate: q [batch, lx, ly] -> total force and density "
                            "(descriptor + MLP + exact elastic term; SPEC section 9)")
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        _add_reference_answer(proto, tmp)
        err = check_onnx(tmp, model) if check else float("nan")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, err


def _add_reference_answer(proto, path: str) -> None:
    """Store the model's answer on the fixed reference lattice (metadata ``neqforce.reference``, computed
    with ONNX Runtime from the file at ``path``) and save: the server compares its warm-up run with it at
    load and refuses a corrupted file (neqforce.server.backends.integrity)."""
    import onnx
    import onnxruntime as ort

    from neqforce.server.backends.integrity import REFERENCE_KEY, reference_answer

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    entry = proto.metadata_props.add()
    entry.key = REFERENCE_KEY
    entry.value = reference_answer(lambda q: sess.run(["force", "density"], {"q": q}))
    onnx.save(proto, path)


def export_checkpoint(checkpoint: str | os.PathLike[str] | list, out: str | os.PathLike[str],
                      check: bool = True, metrics: dict | None = None) -> tuple[Path, float, dict[str, str]]:
    """Export a training checkpoint (or a list of them: their mean, an ensemble); returns
    (path, max ORT-vs-torch error, metadata).

    ``metrics``: test metrics from a later ``neqforce evaluate`` (metrics.json) to store instead of
    those computed at the end of training (e.g. when the test trajectories have grown since).
    """
    paths = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
    loaded = [load_model(p) for p in paths]
    model, ck = loaded[0]
    if len(loaded) > 1:
        for _, other in loaded[1:]:
            if other["params"] != ck["params"] or other.get("test_ids") != ck.get("test_ids"):
                raise ValueError("ensemble members must share physical parameters and test trajectories")
        model = EnsembleForceModel([m for m, _ in loaded])
        ck = {**ck, "ensemble": [c["config"] for _, c in loaded],
              "options": [c.get("options") for _, c in loaded],
              "epochs_run": [c.get("epochs_run") for _, c in loaded],
              "metrics": {"members": [c.get("metrics", {}) for _, c in loaded]}}
    if metrics is not None:
        ck = {**ck, "metrics": {**ck.get("metrics", {}), "test": metrics}}
    meta = model_metadata(ck)
    path, err = export_onnx(model, out, meta, check=check)
    return path, err, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """metadata_props of an ONNX model (via ONNX Runtime, no onnx package needed)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)
