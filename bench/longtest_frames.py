"""Per-frame errors of force models on labelled frames (e.g. the long-device test set) by metallic length.

    neqforce dataset unpack datasets/longtest data/longtest
    python bench/longtest_frames.py data/longtest neqforce/models/voltage.onnx neqforce/models/compact.onnx

For every frame: its number of metallic columns (mean_y |m| < q0/2), and per model the MSE and mean signed
error of the paper's metric with the fixed normalization F_norm = 1.494, and for a committee its largest
per-site spread (``force_std``). A graph with a ``voltage`` input is fed the frame's voltage; q-only
models are run as they are (outside their domain, for comparison).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from neqforce.physics import metallic_columns
from neqforce.trajectory import read_trajectory

F_NORM = 1.494


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder of trajectory files with exact NEGF forces")
    ap.add_argument("models", nargs="+", type=Path)
    args = ap.parse_args()
    sessions = [ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]) for m in args.models]
    rows = []
    for f in sorted(args.data.glob("*.h5")):
        t = read_trajectory(f)
        fr = t.frames()
        for q, force in zip(fr["q"], fr["force"], strict=True):
            row = [int(np.count_nonzero(metallic_columns(q, t.q0_bulk)))]
            for s in sessions:
                names = {i.name for i in s.get_inputs()}
                outs = [o.name for o in s.get_outputs() if o.name in ("force", "force_std")]
                feed = {"q": q[None].astype(np.float32)}
                if "voltage" in names:
                    feed["voltage"] = np.array([t.params.voltage], np.float32)
                res = dict(zip(outs, s.run(outs, feed), strict=True))
                d = (force - res["force"][0].astype(np.float64)) / F_NORM
                spread = float(res["force_std"].max()) if "force_std" in res else float("nan")
                row += [float(np.mean(d**2)), float(np.mean(d)), spread]
            rows.append(row)
    rows.sort()
    head = "metallic" + "".join(f"  | {m.name}: MSE  mean  spread" for m in args.models)
    print(head)
    for r in rows:
        cells = "".join(f"  | {r[1 + 3 * i]:.2e} {r[2 + 3 * i]:+.4f} {r[3 + 3 * i]:.3f}"
                        for i in range(len(args.models)))
        print(f"{r[0]:8d}{cells}")
    a = np.array(rows, dtype=float)
    print("all frames:" + "".join(f"  {m.name} MSE {a[:, 1 + 3 * i].mean():.2e}"
                                  for i, m in enumerate(args.models)))


if __name__ == "__main__":
    main()
