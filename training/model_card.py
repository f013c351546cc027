"""Model card of an exported model: a JSON file beside the ONNX with its provenance and metrics.

    python -m neqforce.training.model_card MODEL.onnx EVAL_DIR/metrics.json --out MODEL.json \\
        --command "neqforce train …" --command "neqforce export …"

Collects the ONNX metadata (parameters, descriptor, architecture, training split, dataset hash), the
file's SHA-256 and size, the evaluation metrics printed by ``neqforce evaluate`` and the exact
commands that made the model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path

from neqforce.hashing import sha256_file
from neqforce.trajectory import software_versions


def pack_record(folder: str | os.PathLike[str]) -> dict:
    """A committed dataset pack as the card names it: its folder and every run's float32 hash."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return {"folder": Path(folder).as_posix(),
            "runs": {r["name"]: r["sha256_float32"] for r in manifest["runs"]},
            "frames": sum(int(r["frames"]) for r in manifest["runs"])}


def model_card(onnx_path: str | os.PathLike[str], evaluation: dict | None = None,
               commands: list[str] | None = None, notes: str = "", packs: list[str] | None = None,
               f_norm: float | None = None) -> dict:
    """The card of ``onnx_path`` as a dict (see module docstring); ``packs``: the committed dataset packs
    it was trained on; ``f_norm``: the fixed normalization of the paper's metric used to evaluate it."""
    import onnxruntime as ort

    path = Path(onnx_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)

    def parsed(key: str):
        try:
            return json.loads(meta.get(key, "null"))
        except json.JSONDecodeError:
            return meta.get(key)

    card = {
        "file": path.name, "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size, "descriptor": meta.get("neqforce.descriptor"),
        "params": parsed("neqforce.params"), "architecture": parsed("neqforce.architecture"),
        "training": parsed("neqforce.training"), "dataset_sha256": meta.get("neqforce.dataset_sha256"),
        "metrics_at_training": parsed("neqforce.metrics"), "evaluation": evaluation or {},
        "commands": commands or [], "notes": notes, "neqforce_version": meta.get("neqforce.version"),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": software_versions(),
        "domain": parsed("neqforce.domain"),
    }
    committee = parsed("neqforce.committee")
    if committee:
        card["committee"] = {k: v for k, v in committee.items() if k not in ("bins", "frame_bins")}
    if packs:
        card["training_data"] = {"packs": [pack_record(f) for f in packs]}
    if f_norm is not None:
        card["metric_normalization"] = {
            "f_norm": f_norm, "note": "fixed F_max of the paper's normalized force error delta = (F_NEGF - "
            "F_ML)/f_norm, the same for every evaluated set (max |F_NEGF| of the first bundled model's test "
            "set, rounded); used by tests/test_bundled_model.py"}
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("metrics", nargs="?", help="metrics.json written by neqforce evaluate")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", action="append", default=[], help="a command that made the model")
    ap.add_argument("--notes", default="")
    ap.add_argument("--pack", action="append", default=[], help="a committed dataset pack it was trained on")
    ap.add_argument("--f-norm", type=float, default=None, help="fixed normalization of the paper's metric")
    ap.add_argument("--evaluation", action="append", default=[], metavar="NAME=METRICS.json",
                    help="further evaluations (e.g. heldout=runs/eval/metrics.json)")
    args = ap.parse_args()
    evaluation = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    if args.evaluation:
        evaluation = dict(evaluation or {})
        for item in args.evaluation:
            name, _, file = item.partition("=")
            evaluation[name] = json.loads(Path(file).read_text())
    card = model_card(args.model, evaluation, args.command, args.notes, args.pack, args.f_norm)
    Path(args.out).write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
