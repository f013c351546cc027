"""Probe: does int8 (ONNX Runtime static quantization, VNNI) make the bundled convolutional model cheaper?

    python bench/int8_probe.py data/vrange data/heldout5      # calibrate on the first, compare on the last

Where 0.8's time goes first: the multiply-adds of every Conv of the graph at 30×28 (counted from the
shapes ORT computes) and the rate they run at, so one sees whether the graph is arithmetic-bound (then
only fewer multiply-adds help) or overhead-bound (then fusing nodes helps). Then the graph is quantized
(QDQ, int8 weights per output channel, uint8 activations, MinMax calibration on frames of the first
dataset — training frames, never the compared ones), and the two graphs are timed side by side
(interleaved, minimum of each) at 30×28 and 1000×1000 on ``--threads`` threads, and compared on the
frames of the last dataset: force MSE against the exact NEGF forces in the paper's metric with the fixed
normalization (default 1.494, the bundled card's), and the largest |ΔF| between the two graphs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from neqforce.models import bundled_model_path
from neqforce.physics import staggered_sign
from neqforce.training.dataset import load_dataset


def session(path: str | Path | bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so,
                                providers=["CPUExecutionProvider"])


def conv_macs(path: Path, lx: int, ly: int) -> int:
    """Multiply-adds of every Conv node for one ``lx``×``ly`` lattice (output size × kernel volume)."""
    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for n in convs:
        model.graph.output.append(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None))
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    weights.update({n.output[0]: list(n.attribute[0].t.dims) for n in model.graph.node
                    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    sess = session(model.SerializeToString(), 1)
    outs = sess.run([n.output[0] for n in convs], feeds(sess, np.zeros((1, lx, ly), np.float32), 3.0))
    return int(sum(np.prod(o.shape) * np.prod(weights[n.input[1]][1:]) for n, o in zip(convs, outs,
                                                                                       strict=True)))


def feeds(sess: ort.InferenceSession, q: np.ndarray, voltage: float | np.ndarray) -> dict[str, np.ndarray]:
    out = {"q": q.astype(np.float32)}
    if any(i.name == "voltage" for i in sess.get_inputs()):
        out["voltage"] = np.broadcast_to(np.asarray(voltage, np.float32), (q.shape[0],)).copy()
    return out


def calibration_frames(folder: str, per_run: int, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    frames = []
    for traj in load_dataset(folder):
        fq = np.asarray(traj.frame_q)
        for i in rng.choice(len(fq), size=min(per_run, len(fq)), replace=False):
            frames.append((fq[i], float(traj.params.voltage)))
    return frames


def quantize(src: Path, dst: Path, frames: list[tuple[np.ndarray, float]]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            if x is None:
                return None
            return {"q": x[0][None].astype(np.float32), "voltage": np.array([x[1]], np.float32)}

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"], calibrate_method=CalibrationMethod.MinMax)


def interleaved_min(funcs, min_time: float = 2.0) -> list[float]:
    for f in funcs:
        f()
    times: list[list[float]] = [[] for _ in funcs]
    while sum(map(sum, times)) < min_time or len(times[0]) < 3:
        for f, out in zip(funcs, times, strict=True):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("calibrate", help="dataset folder of training frames for calibration")
    ap.add_argument("compare", help="dataset folder of NEGF frames to compare the two graphs on")
    ap.add_argument("--model", default=str(bundled_model_path()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-run", type=int, default=6, help="calibration frames per trajectory")
    ap.add_argument("--f-norm", type=float, default=1.494)
    args = ap.parse_args()
    src = Path(args.model)
    macs = conv_macs(src, 30, 28)
    with tempfile.TemporaryDirectory() as tmp:
        q8 = Path(tmp) / "int8.onnx"
        quantize(src, q8, calibration_frames(args.calibrate, args.per_run))
        fp, i8 = session(src, args.threads), session(q8, args.threads)
        rng = np.random.default_rng(0)
        q = 2.39 * staggered_sign(30, 28) + 0.1 * rng.standard_normal((30, 28))
        q[:8] = 0.1 * rng.standard_normal((8, 28))
        small = q[None]
        big = np.tile(q, (34, 36))[None, :1000, :1000]
        t_fp, t_i8 = interleaved_min([lambda: fp.run(["force"], feeds(fp, small, 3.0)),
                                      lambda: i8.run(["force"], feeds(i8, small, 3.0))])
        b_fp, b_i8 = interleaved_min([lambda: fp.run(["force"], feeds(fp, big, 3.0)),
                                      lambda: i8.run(["force"], feeds(i8, big, 3.0))], min_time=6.0)
        print(f"{src.name}: {macs / 1e6:.0f} M conv multiply-adds per 30×28 call = "
              f"{2 * macs / t_fp / 1e9:.0f} GFLOP/s at {t_fp * 1e3:.2f} ms ({args.threads} threads)")
        print(f"{'':24s} {'float32':>12s} {'int8 (QDQ)':>12s} {'ratio':>8s}")
        print(f"{'30×28 ms/call':24s} {t_fp * 1e3:12.3f} {t_i8 * 1e3:12.3f} {t_fp / t_i8:8.2f}")
        print(f"{'1000×1000 sites/s':24s} {1e6 / b_fp:12.3g} {1e6 / b_i8:12.3g} {b_fp / b_i8:8.2f}")
        err_fp, err_i8, diff, n = 0.0, 0.0, 0.0, 0
        for traj in load_dataset(args.compare):
            v = float(traj.params.voltage)
            qs, fs = np.asarray(traj.frame_q, np.float32), np.asarray(traj.frame_force)
            a, b = (np.concatenate([s.run(["force"], feeds(s, qs[i:i + 64], v))[0]
                                    for i in range(0, len(qs), 64)]) for s in (fp, i8))
            err_fp += float(np.sum(((a - fs) / args.f_norm) ** 2))
            err_i8 += float(np.sum(((b - fs) / args.f_norm) ** 2))
            diff, n = max(diff, float(np.max(np.abs(a - b)))), n + fs.size
        print(f"{'force MSE (F/' + format(args.f_norm, 'g') + ')':24s} {err_fp / n:12.3e} {err_i8 / n:12.3e} "
              f"{err_i8 / err_fp:8.2f}   ({n} sites of {args.compare}; max |ΔF| {diff:.3g})")


if __name__ == "__main__":
    main()
