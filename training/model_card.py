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
import hashlib
import json
import os
from pathlib import Path

from neqforce.trajectory import software_versions


def model_card(onnx_path: str | os.PathLike[str], evaluation: dict | None = None,
               commands: list[str] | None = None, notes: str = "") -> dict:
    """The card of ``onnx_path`` as a dict (see module docstring)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)

    def parsed(key: str):
        try:
            return json.loads(meta.get(key, "null"))
        except json.JSONDecodeError:
            return meta.get(key)

    return {
        "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size_bytes": path.stat().st_size, "descriptor": meta.get("neqforce.descriptor"),
        "params": parsed("neqforce.params"), "architecture": parsed("neqforce.architecture"),
        "training": parsed("neqforce.training"), "dataset_sha256": meta.get("neqforce.dataset_sha256"),
        "metrics_at_training": parsed("neqforce.metrics"), "evaluation": evaluation or {},
        "commands": commands or [], "notes": notes, "neqforce_version": meta.get("neqforce.version"),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": software_versions(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("metrics", nargs="?", help="metrics.json written by neqforce evaluate")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", action="append", default=[], help="a command that made the model")
    ap.add_argument("--notes", default="")
    args = ap.parse_args()
    evaluation = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    card = model_card(args.model, evaluation, args.command, args.notes)
    Path(args.out).write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
