"""ONNX export of a trained force model (SPEC §9 contract) with a built-in ONNX Runtime check.

The exported graph is :class:`~neqforce.training.folded.FoldedEnsemble`: input ``q`` float32
[batch, lx, ly] (all dynamic), outputs ``force`` and ``density`` of the same shape; the descriptor,
the network and the exact elastic term are all inside the graph. A model with global inputs also takes
``voltage`` float32 [batch]; an ensemble of 2+ members (a committee) also outputs ``force_std`` (the
members' per-site std, its variance averaged over same-sublattice neighbours: ``model.local_spread``) and
stores ``neqforce.committee`` (its calibrated spread threshold, :mod:`neqforce.training.calibration`).
Metadata (``metadata_props``):
``neqforce.params``, ``neqforce.descriptor``, ``neqforce.metrics``, ``neqforce.dataset_sha256``,
``neqforce.version`` (SPEC §9), plus ``neqforce.architecture``, ``neqforce.training`` and
``neqforce.domain`` (JSON: the validity domain, see :func:`model_domain`), ``neqforce.reference``
(JSON: the model's answer on a fixed lattice, checked by the server at load) and
``neqforce.batch_invariant`` ("true" when ONNX Runtime was checked at export to give every lattice of a
batch the floats it gets alone, :func:`check_batch_invariance`: ``neqforce sweep`` then evaluates several
lattices per call).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from neqforce import __version__
from neqforce.atomic import atomic_path
from neqforce.server.backends.integrity import REFERENCE_KEY
from neqforce.server.backends.onnx import BATCH_INVARIANT_KEY

from .calibration import DISTILLED_SPREAD_DEFINITION, SPREAD_DEFINITION
from .checkpoint import load_model
from .conv import ConvForceModel, ConvGraph
from .folded import FoldedEnsemble
from .idealized import dynamics_like_lattices
from .model import EnsembleForceModel, ForceModel

OPSET = 18
#: Metadata of a committee: JSON {"members", "spread_threshold" (force units, or null: not calibrated), …}.
COMMITTEE_KEY = "neqforce.committee"
#: Lattices of the batch-invariance check: the default device, a small one, long ones, odd sizes.
INVARIANCE_SHAPES = ((30, 28), (12, 10), (17, 9), (60, 28), (120, 28))
#: Lattices (batch, lx, ly) of the export check: small, odd, wide-in-y, a chain and the default.
CHECK_SHAPES = ((3, 8, 6), (1, 13, 10), (2, 30, 28), (1, 5, 1), (2, 7, 3))
CHECK_TOL = 1e-5


def model_domain(ck: dict) -> dict:
    """Validity domain of a model trained from checkpoint ``ck`` (metadata ``neqforce.domain``): the
    lattices it was trained on as ranges of lx and ly, the range of training voltages when the model
    takes V as an input (else V is fixed at ``neqforce.params``), every other physical parameter fixed,
    and ``metallic_columns_max``, the most metallic columns of a training frame (when recorded). The
    server's AUTO routing uses it (docs/ml_model.md)."""
    from .model import config_from_dict

    lattices = ck.get("lattices") or [ck["lattice"]]
    lxs, lys = [int(a) for a, _ in lattices], [int(b) for _, b in lattices]
    ranges: dict = {"lx": [min(lxs), max(lxs)], "ly": [min(lys), max(lys)]}
    basis = f"training trajectories on {', '.join(f'{a}x{b}' for a, b in lattices)}"
    if config_from_dict(ck["config"]).takes_voltage and ck.get("voltages"):
        ranges["voltage"] = [min(ck["voltages"]), max(ck["voltages"])]
        basis += f" at V = {', '.join(f'{v:g}' for v in ck['voltages'])}"
    domain = {"ranges": ranges, "basis": basis + ", the other parameters fixed"}
    if ck.get("metallic_columns_max") is not None:
        domain["metallic_columns_max"] = int(ck["metallic_columns_max"])
    return domain


def model_metadata(ck: dict) -> dict[str, str]:
    """The metadata_props of a model exported from checkpoint ``ck`` (all values strings)."""
    from .model import config_from_dict

    cfg = config_from_dict(ck["config"])
    training = {k: ck.get(k) for k in ("train_ids", "test_ids", "lattice", "lattices", "voltages",
                                        "metallic_columns_max", "options", "epochs_run", "torch_version")}
    members = [config_from_dict(c) for c in ck.get("ensemble", [ck["config"]])]
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


def onnx_feeds(sess, q: np.ndarray, voltage: float | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Inputs of an ONNX force model: ``q`` and, when the graph declares it, ``voltage`` [batch] (float32;
    a scalar is broadcast over the batch). ValueError when the graph needs a voltage and none is given."""
    feeds = {"q": np.asarray(q, dtype=np.float32)}
    if "voltage" in {i.name for i in sess.get_inputs()}:
        if voltage is None:
            raise ValueError("the model takes the voltage as an input; give one")
        feeds["voltage"] = np.broadcast_to(np.asarray(voltage, np.float32), (len(feeds["q"]),)).copy()
    return feeds


def check_onnx(path: str | os.PathLike[str], model: ForceModel, shapes=CHECK_SHAPES, tol: float = CHECK_TOL,
               seed: int = 0) -> float:
    """Largest |ORT - torch| / max(1, max|F|) over force, density (and force_std of a committee) on
    :func:`random_lattices` (at random voltages in [2, 4] for a model with a voltage input); raises
    ValueError above ``tol`` (float32 rounding of O(1) forces is ~1e-6)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    outputs = [o.name for o in sess.get_outputs()]
    committee = "force_std" in outputs
    spread_source = (isinstance(model, EnsembleForceModel) and len(model.members) > 1) or \
        bool(getattr(model, "has_spread", False))
    if committee != spread_source:
        raise ValueError(f"ONNX check failed: outputs {outputs} do not match the torch model")
    worst = 0.0
    for shape in shapes:
        q = random_lattices(shape, rng)
        v = rng.uniform(2.0, 4.0, size=shape[0]).astype(np.float32)
        res = sess.run(outputs, onnx_feeds(sess, q, v))
        f_ort, n_ort = res[outputs.index("force")], res[outputs.index("density")]
        vt = torch.from_numpy(v) if "voltage" in {i.name for i in sess.get_inputs()} else None
        with torch.no_grad():
            f_t, n_t = model(torch.from_numpy(q), vt)
            s_t = model.spread(torch.from_numpy(q), vt).numpy() if committee else None
        scale = max(1.0, float(np.abs(f_t.numpy()).max()))
        err = max(float(np.abs(f_ort - f_t.numpy()).max()), float(np.abs(n_ort - n_t.numpy()).max())) / scale
        if committee:
            err = max(err, float(np.abs(res[outputs.index("force_std")] - s_t).max()) / scale)
        if f_ort.shape != shape or not np.isfinite(err) or err > tol:
            raise ValueError(f"ONNX check failed on {shape}: max |ORT - torch| = {err:.2e} > {tol:.0e}")
        worst = max(worst, err)
    return worst


def write_graph(folded: FoldedEnsemble | ConvGraph, path: str) -> tuple[list[str], list[str]]:
    """``torch.onnx.export`` of a folded model to ``path`` with the contract's names (SPEC §9: ``q``
    [, ``voltage``] → ``force``, ``density`` [, ``force_std``]) and dynamic batch, lx, ly; returns (input
    names, output names)."""
    lattice = {0: "batch", 1: "lx", 2: "ly"}
    inputs = ["q", "voltage"] if folded.takes_voltage else ["q"]
    outputs = ["force", "density"] + (["force_std"] if folded.committee else [])
    axes = {name: lattice for name in ["q", *outputs]}
    if folded.takes_voltage:
        axes["voltage"] = {0: "batch"}
    example = (torch.zeros(2, 8, 6),) + ((torch.full((2,), 3.0),) if folded.takes_voltage else ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter handles the symbolic (lx, ly) index arithmetic of the model
        torch.onnx.export(folded, example, path, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return inputs, outputs


def export_onnx(model: ForceModel, out: str | os.PathLike[str], metadata: dict[str, str] | None = None,
                check: bool = True) -> tuple[Path, float]:
    """Write ``model`` as ONNX (atomic rename) with metadata; returns (path, max ORT-vs-torch error)."""
    import onnx

    out = Path(out)
    model = model.cpu().eval()
    # one member: (force, density), what a single model exports; 2+: a committee with force_std
    members = list(model.members) if isinstance(model, EnsembleForceModel) else [model]
    if isinstance(members[0], ConvForceModel):  # the device-wide convolutional model (training/conv.py)
        folded = ConvGraph(members).eval()
        kind = "device-wide dilated convolutions"
    else:
        folded = FoldedEnsemble(members).eval()
        kind = "descriptor + MLP"
    with atomic_path(out) as path:  # a temporary file beside ``out``, renamed over it at the end
        tmp = str(path)
        inputs, outputs = write_graph(folded, tmp)
        proto = onnx.load(tmp)
        proto.doc_string = (f"neqforce surrogate: {', '.join(inputs)} -> {', '.join(outputs)} "
                            f"({kind} + exact elastic term; SPEC section 9, docs/physics.md)")
        del proto.metadata_props[:]
        _add_metadata(proto, metadata or {})
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        # what ONNX Runtime answers from the file just written, stored in it (one more save)
        first = model.members[0] if isinstance(model, EnsembleForceModel) else model
        _add_metadata(proto, {REFERENCE_KEY: _reference_answer(tmp, float(first.v_default)),
                              BATCH_INVARIANT_KEY: json.dumps(check_batch_invariance(tmp))})
        onnx.save(proto, tmp)
        err = check_onnx(tmp, model) if check else float("nan")
    return out, err


def _reference_answer(path: str, voltage: float) -> str:
    """The model's answer on the fixed reference lattice (metadata ``neqforce.reference``), computed with
    ONNX Runtime from the file at ``path``: the server compares its warm-up run with it at load and refuses
    a corrupted file (neqforce.server.backends.integrity)."""
    import onnxruntime as ort

    from neqforce.server.backends.integrity import reference_answer

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a model with a voltage input answers at the voltage of its neqforce.params (as the server's warm-up)
    return reference_answer(lambda q: sess.run(["force", "density"], onnx_feeds(sess, q, voltage)))


def _add_metadata(proto, items: dict[str, str]) -> None:
    """Append metadata entries (``metadata_props``) to ``proto``, in order."""
    for key, value in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_batch_invariance(path: str | os.PathLike[str], n: int = 8, seed: int = 0) -> bool:
    """Whether ONNX Runtime (CPU, one intra-op thread) gives every lattice of a batch exactly the floats
    (force, density and force_std when present) it gives the lattice alone, on ``n`` dynamics-like
    configurations per shape of :data:`INVARIANCE_SHAPES` (metallic domains of every length at either
    electrode, rough walls, thermal-size noise, voltages in [2, 4]: the global features are then off their
    saturated values), in batches of 2, 4 and n. Bit-for-bit sweeps rely on it (``neqforce sweep``
    batches replicas whose ``simulate`` twins are evaluated one lattice per call)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    for lx, ly in INVARIANCE_SHAPES:
        q = dynamics_like_lattices(lx, ly, n, rng)
        v = rng.uniform(2.0, 4.0, size=n)
        alone = [sess.run(outputs, onnx_feeds(sess, q[i:i + 1], v[i:i + 1])) for i in range(n)]
        for k in (2, 4, n):
            for i in range(0, n, k):
                res = sess.run(outputs, onnx_feeds(sess, q[i:i + k], v[i:i + k]))
                for j in range(len(res[0])):
                    if not all(np.array_equal(a[0], b[j]) for a, b in zip(alone[i + j], res, strict=True)):
                        return False
    return True


def export_checkpoint(checkpoint: str | os.PathLike[str] | list, out: str | os.PathLike[str],
                      check: bool = True, metrics: dict | None = None, calibrate=None,
                      spread_target: float | None = None) -> tuple[Path, float, dict[str, str]]:
    """Export a training checkpoint (or a list of them: their mean, an ensemble; 2+ members are a
    committee with a ``force_std`` output); returns (path, max ORT-vs-torch error, metadata).

    ``metrics``: test metrics from a later ``neqforce evaluate`` (metrics.json) to store instead of
    those computed at the end of training (e.g. when the test trajectories have grown since).
    ``calibrate``: dataset(s) holding the members' training trajectories: the committee's spread
    threshold is calibrated on their validation frames (:mod:`neqforce.training.calibration`) against
    ``spread_target`` (force RMSE; default the issue's MSE 3e-4 at F_norm = 1.494).
    """
    paths = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
    loaded = [load_model(p) for p in paths]
    model, ck = loaded[0]
    if len(loaded) > 1:
        for _, other in loaded[1:]:
            arch = (other["config"].get("arch", "descriptor"), ck["config"].get("arch", "descriptor"))
            if arch[0] != arch[1]:
                raise ValueError(f"ensemble members must share one architecture ({arch[1]} and {arch[0]} "
                                 "checkpoints cannot form one committee)")
            if other["params"] != ck["params"] or other.get("test_ids") != ck.get("test_ids"):
                raise ValueError("ensemble members must share physical parameters and test trajectories")
            if (other.get("voltages"), other.get("lattices")) != (ck.get("voltages"), ck.get("lattices")):
                raise ValueError("ensemble members must be trained on the same voltages and lattices")
            if other["config"].get("global_features", "") != ck["config"].get("global_features", ""):
                raise ValueError("ensemble members must share their global inputs (--preset)")
        model = EnsembleForceModel([m for m, _ in loaded])
        mcm = [c.get("metallic_columns_max") for _, c in loaded]
        ck = {**ck, "ensemble": [c["config"] for _, c in loaded],
              "options": [c.get("options") for _, c in loaded],
              "epochs_run": [c.get("epochs_run") for _, c in loaded],
              "metrics": {"members": [c.get("metrics", {}) for _, c in loaded]},
              "metallic_columns_max": None if None in mcm else min(mcm)}
    if metrics is not None:
        ck = {**ck, "metrics": {**ck.get("metrics", {}), "test": metrics}}
    meta = model_metadata(ck)
    if len(loaded) > 1:
        committee: dict = {"members": len(loaded), "spread_threshold": None, "spread": SPREAD_DEFINITION,
                           "spread_definition": SPREAD_DEFINITION}
        if calibrate:
            from .calibration import TARGET_RMSE_FORCE, calibrate_committee

            committee.update(calibrate_committee(model, ck, calibrate, spread_target or TARGET_RMSE_FORCE))
        meta[COMMITTEE_KEY] = json.dumps(committee, sort_keys=True)
    elif getattr(model, "has_spread", False):  # one network distilled from a committee, with its spread
        teacher = ck.get("teacher") or {}
        committee = {"members": 1, "spread_threshold": None, "spread": DISTILLED_SPREAD_DEFINITION,
                     "spread_definition": DISTILLED_SPREAD_DEFINITION, "distilled_from": teacher}
        if calibrate:
            from .calibration import TARGET_RMSE_FORCE, calibrate_committee

            committee.update(calibrate_committee(model, ck, calibrate, spread_target or TARGET_RMSE_FORCE))
            committee["spread_definition"] = DISTILLED_SPREAD_DEFINITION
        meta[COMMITTEE_KEY] = json.dumps(committee, sort_keys=True)
    elif calibrate:
        raise ValueError("--calibrate needs a committee: export two or more checkpoints together, or one "
                         "network trained with --teacher (a spread head)")
    path, err = export_onnx(model, out, meta, check=check)
    return path, err, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """metadata_props of an ONNX model (via ONNX Runtime, no onnx package needed)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)
