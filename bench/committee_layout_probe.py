"""Probe: a committee's members as one grouped convolution per layer, against the export graph.

    python bench/committee_layout_probe.py runs/F/m0/model.pt runs/F/m1/model.pt runs/F/m2/model.pt

The same weights and function as :class:`neqforce.training.conv.ConvGraph` (valid-in-y strip, mirror
average, committee mean and spread), but every layer of the M members runs as one convolution with
``groups = M`` (M·C channels) instead of M convolutions of C channels. Both graphs are exported to ONNX and
timed in ONNX Runtime on 2 threads, interleaved (minimum of each), with their largest output difference.
Measured for 0.10's members (docs/ml_model.md, "Where the time goes"): 0.86× the time at 30×28, 0.90× at
60×28, 1.18× at 200×200, 1.02× at 1000×1000 — not adopted.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from neqforce.training.checkpoint import load_model
from neqforce.training.conv import V_MID, ConvGraph, _channels, _mirror, _rows
from neqforce.training.export import write_graph
from neqforce.training.model import local_spread

SHAPES = ((30, 28), (60, 28), (200, 200), (1000, 1000))


def _cat(nets, get) -> torch.Tensor:
    return torch.cat([get(n) for n in nets])


class GroupedGraph(ConvGraph):
    """ConvGraph's function with the members fused into grouped convolutions (mirror-averaged members)."""

    def forward(self, q: torch.Tensor, voltage: torch.Tensor) -> tuple[torch.Tensor, ...]:
        conv = nn.functional.conv2d
        members = list(self.members)
        nets = [m.net for m in members]
        n_m, c = len(nets), int(nets[0].inp.weight.shape[0])
        b, ly = q.shape[0], q.shape[-1]
        mirror = _mirror(ly, q.device)
        v = torch.as_tensor(voltage, dtype=q.dtype).reshape(-1).expand(b) - V_MID
        x = _channels(torch.cat([q, q[..., mirror]]), torch.cat([v, v]))
        x = x[..., _rows(ly, nets[0].strip_rows, q.device)]
        h = conv(x, _cat(nets, lambda n: n.inp.weight), _cat(nets, lambda n: n.inp.bias), padding=(2, 0))
        crop = torch.zeros(n_m * c, 1, 1, 3)
        crop[:, 0, 0, 1] = 1.0
        act = nets[0].act
        for k, blk in enumerate(nets[0].blocks):
            layer = [n.blocks[k] for n in nets]
            w1, b1 = torch.cat([x.conv1.weight for x in layer]), torch.cat([x.conv1.bias for x in layer])
            w2, b2 = torch.cat([x.conv2.weight for x in layer]), torch.cat([x.conv2.bias for x in layer])
            z = conv(act(h), w1, b1, padding=(blk.d, 0), dilation=(blk.d, 1), groups=n_m)
            h = conv(h, crop, groups=n_m * c) + conv(act(z), w2, b2, groups=n_m)
        o = conv(act(h), _cat(nets, lambda n: n.out.weight), _cat(nets, lambda n: n.out.bias), groups=n_m)
        o = 0.5 * (o[:b] + o[b:][..., mirror])  # (B, M, lx, ly)
        scale = torch.stack([m.y_std for m in members]).reshape(1, n_m, 1, 1)
        shift = torch.stack([m.y_mean for m in members]).reshape(1, n_m, 1, 1)
        each = (o * scale + shift).transpose(0, 1)
        el = each.mean(0)
        spread = local_spread(each.std(0, unbiased=False))
        return el + members[0].elastic(q), 0.5 + el / members[0].g, spread


def main(paths: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp())
    members = [load_model(p)[0].requires_grad_(False) for p in paths]
    with torch.no_grad():
        write_graph(ConvGraph(members).eval(), str(tmp / "plain.onnx"))
        write_graph(GroupedGraph(members).eval(), str(tmp / "grouped.onnx"))
    sessions = {}
    for name in ("plain", "grouped"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        path = str(tmp / f"{name}.onnx")
        sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for lx, ly in SHAPES:
        cdw = 2.39 * ((np.add.outer(np.arange(lx), np.arange(ly)) % 2) * 2 - 1)
        feeds = {"q": (cdw + rng.normal(0, 0.5, (1, lx, ly))).astype(np.float32),
                 "voltage": np.array([3.2], np.float32)}
        ref = sessions["plain"].run(None, feeds)
        best, err = {}, {}
        for _ in range(3):  # interleaved rounds
            for name, sess in sessions.items():
                out = sess.run(None, feeds)
                err[name] = max(float(np.abs(a - r).max()) for a, r in zip(out, ref, strict=True))
                for _ in range(3 if lx >= 1000 else 100):
                    t = time.perf_counter()
                    sess.run(None, feeds)
                    best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
        print(f"{lx}x{ly}: plain {best['plain'] * 1e3:.3f} ms, grouped {best['grouped'] * 1e3:.3f} ms "
              f"({best['grouped'] / best['plain']:.2f}x; max |diff| {err['grouped']:.1e})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
