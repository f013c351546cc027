"""Give an exported committee the current spread definition without retraining (``neqforce respread``).

Committees exported before package 0.5.2 output ``force_std`` = the members' per-site std (ddof 0). Their
members' checkpoints may be gone, but the graph holds everything: this module renames that output
``member_std``, appends the graph of :func:`~neqforce.training.model.local_spread` (exported from torch, the
one implementation) and names its result ``force_std``. ``force`` and ``density`` are untouched (checked
bit-for-bit against the source on random lattices), the new ``force_std`` is checked against
``local_spread`` of the source's std, the spread threshold is recalibrated on the validation frames of the
committee's training trajectories with the same rule and target as the source's, the batch invariance is
measured again, and the file is written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from neqforce.atomic import atomic_path
from neqforce.hashing import sha256_file

from .calibration import SPREAD_DEFINITION, TARGET_RMSE_FORCE, calibrate_predictions
from .export import (
    BATCH_INVARIANT_KEY,
    COMMITTEE_KEY,
    OPSET,
    _add_metadata,
    check_batch_invariance,
    onnx_feeds,
    random_lattices,
)
from .model import local_spread

MEMBER_STD = "member_std"
PREFIX = "local_spread/"


class _LocalSpread(torch.nn.Module):
    def forward(self, std: torch.Tensor) -> torch.Tensor:
        return local_spread(std)


def spread_graph(ir_version: int):
    """The ONNX graph ``member_std`` (B, lx, ly) → ``force_std`` of :func:`local_spread` (dynamic axes)."""
    import onnx

    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        axes = {0: "batch", 1: "lx", 2: "ly"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_LocalSpread(), (torch.ones(2, 8, 6),), tmp, input_names=[MEMBER_STD],
                              output_names=["force_std"], dynamic_axes={MEMBER_STD: axes, "force_std": axes},
                              opset_version=OPSET, dynamo=False)
        proto = onnx.load(tmp)
    finally:
        os.unlink(tmp)
    proto.ir_version = ir_version
    return proto


def _session(path: str | os.PathLike[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_respread(src: str | os.PathLike[str], new: str | os.PathLike[str], seed: int = 0) -> float:
    """``force``/``density`` of ``new`` equal ``src``'s bit for bit; returns the largest
    |force_std(new) − local_spread(force_std(src))| on random lattices (ValueError on a force mismatch)."""
    a, b = _session(src), _session(new)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in ((3, 8, 6), (2, 30, 28), (1, 5, 1), (2, 7, 3), (1, 60, 28)):
        q = random_lattices(shape, rng)
        v = rng.uniform(2.0, 4.0, size=shape[0]).astype(np.float32)
        fa, da, sa = a.run(["force", "density", "force_std"], onnx_feeds(a, q, v))
        fb, db, sb = b.run(["force", "density", "force_std"], onnx_feeds(b, q, v))
        if not (np.array_equal(fa, fb) and np.array_equal(da, db)):
            raise ValueError(f"respread changed force or density on {shape}: refusing to write")
        expected = local_spread(torch.from_numpy(sa)).numpy()
        worst = max(worst, float(np.abs(sb - expected).max()))
    return worst


def respread(src: str | os.PathLike[str], out: str | os.PathLike[str],
             calibrate: list[str] | None = None, tol: float = 1e-6) -> tuple[Path, dict]:
    """Write ``src`` with the current committee spread to ``out``; returns (path, new committee record).
    ``calibrate``: the dataset(s) the members were trained on (the threshold is recalibrated on their
    validation frames against the source's ``target_rmse_force``); without it the threshold is dropped
    (null: not calibrated) rather than kept for a statistic it was not calibrated on."""
    import onnx
    import onnx.compose

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ValueError(f"model file not found: {src}")
    m1 = onnx.load(str(src))
    meta = {p.key: p.value for p in m1.metadata_props}
    outputs = [o.name for o in m1.graph.output]
    if "force_std" not in outputs or COMMITTEE_KEY not in meta:
        raise ValueError(f"{src} is not a committee (no force_std output): nothing to respread")
    committee = json.loads(meta[COMMITTEE_KEY])
    if committee.get("spread_definition") == SPREAD_DEFINITION or MEMBER_STD in outputs:
        raise ValueError(f"{src} already outputs the current committee spread")
    for node in m1.graph.node:
        node.output[:] = [MEMBER_STD if name == "force_std" else name for name in node.output]
    for o in m1.graph.output:
        if o.name == "force_std":
            o.name = MEMBER_STD
    m2 = spread_graph(m1.ir_version)
    merged = onnx.compose.merge_models(m1, m2, io_map=[(MEMBER_STD, MEMBER_STD)], prefix2=PREFIX,
                                       outputs=["force", "density", PREFIX + "force_std"])
    for node in merged.graph.node:
        node.output[:] = ["force_std" if name == PREFIX + "force_std" else name for name in node.output]
    for o in merged.graph.output:
        if o.name == PREFIX + "force_std":
            o.name = "force_std"
    merged.doc_string = m1.doc_string
    merged.producer_name, merged.producer_version = m1.producer_name, m1.producer_version
    del merged.metadata_props[:]
    onnx.checker.check_model(merged)

    with atomic_path(out) as path:  # a temporary file beside ``out``, renamed over it at the end
        tmp = str(path)
        onnx.save(merged, tmp)
        err = check_respread(src, tmp)
        if not err <= tol:
            raise ValueError(f"respread force_std differs from local_spread of the source by {err:.2e}")
        record = {k: v for k, v in committee.items()
                  if k in ("members", "target_rmse_force")}
        record.update(spread=SPREAD_DEFINITION, spread_definition=SPREAD_DEFINITION,
                      spread_threshold=None, respread_from={"sha256": sha256_file(src),
                                                            "committee": committee})
        if calibrate:
            sess = _session(tmp)
            train_ids = json.loads(meta.get("neqforce.training", "{}")).get("train_ids") or []

            def predict(q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                force, std = sess.run(["force", "force_std"], onnx_feeds(sess, q, v))
                return force, std

            record.update(calibrate_predictions(predict, train_ids, calibrate,
                                                committee.get("target_rmse_force") or TARGET_RMSE_FORCE))
            record["spread_definition"] = SPREAD_DEFINITION
        meta[COMMITTEE_KEY] = json.dumps(record, sort_keys=True)
        meta[BATCH_INVARIANT_KEY] = json.dumps(check_batch_invariance(tmp))
        _add_metadata(merged, meta)
        onnx.save(merged, tmp)
    return out, record
