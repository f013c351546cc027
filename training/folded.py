"""Inference form of a trained :class:`ForceModel`: normalization and descriptor folded into matmuls.

Every feature of the first layer is linear in the 113 neighbour values Q_j (ordered line, top,
bottom as in :func:`neqforce.training.descriptors.offsets`), except G_A'' = f_A'' f_ref, whose
first-layer contribution W_G · (f_A'' f_ref) = f_ref · (W_G · f_A'') is a linear map times the
linear scalar f_ref. So, with raw = (Q_j) (113 channels per site) and one matrix product

    M = W_big @ raw,   W_big = [W_lin; W_G'; W_a'; w_ref]   ((3H + 1) × 113)
    z = M_lin + M_ref · M_G + b + E[x],   h1 = φ(z + M_a) + φ(z - M_a)

where E[x] is the first-layer weight of the electrode one-hot features of column x, plus, for a model
with global inputs (voltage, metallic runs: training/global_features.py), W_g · g[x] per column (an
(H × n_g) product per column, O(lx), not per site). Standardization
of features and target is folded into the weights. The layout is channels-first (B, C, lx·ly), so
the neighbour gathers copy whole planes and every layer is one GEMM: this is the graph exported to
ONNX. It computes the same function as :class:`ForceModel` (tested to float32 rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from .descriptors import offsets
from .global_features import GlobalFeatures, n_site
from .model import ACTIVATIONS, ForceModel, local_spread, neighbour_sum


class FoldedForceModel(nn.Module):
    """q (B, lx, ly) float32 [, voltage (B,) float32] → (force, density), each (B, lx, ly); see the
    module docstring."""

    def __init__(self, model: ForceModel) -> None:
        super().__init__()
        cfg = model.config
        if model.globals is not None and n_site(model.globals.kind):
            raise ValueError(f"global features {model.globals.kind!r} have per-site inputs (the row-channel "
                             "prototype): not exportable to ONNX yet")
        r = self.r_cut = cfg.r_cut
        off = offsets(r)
        w = 2 * r + 1
        n_line, n_pair = len(off.line), len(off.top)
        sq_index = [(o[0] + r) * w + (o[1] + r) for o in (*off.line, *off.top, *off.bottom)]
        self.register_buffer("idx_raw", torch.tensor(sq_index, dtype=torch.int64), persistent=False)
        self.register_buffer("dy", torch.arange(-r, r + 1, dtype=torch.int64), persistent=False)
        self.register_buffer("dist", torch.arange(r, dtype=torch.int64), persistent=False)

        with torch.no_grad():
            first = model.net.first
            n_s, n_desc = model.s_mean.shape[0], model.n_desc  # all invariant inputs / descriptor ones
            w_quad = first.weight[:, n_s:]  # (H, K) weights of the quadratic A'' invariants (K may be 0)
            w1 = first.weight[:, :n_s] / model.s_std  # (H, n_s): standardization folded in
            b1 = first.bias - w1 @ model.s_mean
            h = w1.shape[0]
            w_line, w_sym = w1[:, :n_line], w1[:, n_line:n_line + n_pair]
            w_g = w1[:, n_line + n_pair:n_line + 2 * n_pair]
            zeros = torch.zeros(h, n_line)
            rows = [torch.cat([w_line, w_sym, w_sym], 1), torch.cat([zeros, w_g, -w_g], 1)]
            self.has_anti = model.net.first_anti is not None
            if self.has_anti:
                w_a = model.net.first_anti.weight / model.a_std
                rows.append(torch.cat([zeros, w_a, -w_a], 1))
            self.n_quad = w_quad.shape[1]
            if self.n_quad:
                v = model.net.anti_proj.weight / model.a_std  # (K, n_a)
                rows.append(torch.cat([torch.zeros(self.n_quad, n_line), v, -v], 1))
            self.register_buffer("w_quad", w_quad.contiguous())
            ref = torch.cat([torch.zeros(n_line), torch.full((n_pair,), 1.0 / n_pair),
                             torch.full((n_pair,), -1.0 / n_pair)])
            rows.append(ref.unsqueeze(0))
            self.register_buffer("w_big", torch.cat(rows, 0).contiguous())
            self.register_buffer("b1", b1.unsqueeze(1).contiguous())  # (H, 1)
            n_elec = n_desc - (n_line + 2 * n_pair)
            self.has_elec = n_elec > 0
            self.register_buffer("w_elec", w1[:, n_line + 2 * n_pair:n_desc].contiguous())  # (H, 2r)
            self.register_buffer("w_glob", w1[:, n_desc:].t().contiguous())  # (n_g, H)
            # the export's copy computes the same features with batch-invariant kernels (GlobalFeatures)
            self.globals = (GlobalFeatures(model.globals.kind, float(model.globals.q0), batch_invariant=True)
                            if model.globals is not None else None)
            self.takes_voltage = model.config.takes_voltage
            self.register_buffer("v_default", model.v_default.clone(), persistent=False)
            self.hidden = h
            self.act = ACTIVATIONS[cfg.activation]()
            linears = [m for m in model.net.rest if isinstance(m, nn.Linear)]
            ws, bs = [], []
            for i, lin in enumerate(linears):
                wi, bi = lin.weight.clone(), lin.bias.clone()
                if i == len(linears) - 1:  # fold the target scale: y = y_std · out + y_mean
                    wi, bi = wi * model.y_std, bi * model.y_std + model.y_mean
                ws.append(nn.Parameter(wi.contiguous(), requires_grad=False))
                bs.append(nn.Parameter(bi.unsqueeze(1).contiguous(), requires_grad=False))
            self.ws, self.bs = nn.ParameterList(ws), nn.ParameterList(bs)
            self.register_buffer("g", model.g.clone())
            self.register_buffer("k", model.k.clone())
            self.register_buffer("kappa", model.kappa.clone())

    def raw_neighbours(self, q: torch.Tensor) -> torch.Tensor:
        """Q_j of the 113 offsets, channels-first: (B, 113, lx·ly); x outside reads 0, y periodic."""
        r = self.r_cut
        b, lx, ly = q.shape[0], q.shape[1], q.shape[2]
        n = lx * ly
        p = nn.functional.pad(q, (0, 0, r, r))  # (B, lx + 2r, ly)
        yidx = torch.remainder(self.dy.unsqueeze(1) + torch.arange(ly, device=q.device).unsqueeze(0), ly)
        yg = p[:, :, yidx].transpose(1, 2)  # (B, 2r+1 [dy], lx + 2r, ly)
        yf = yg.reshape(b, 2 * r + 1, (lx + 2 * r) * ly)
        cols = [yf[:, :, i * ly:i * ly + n] for i in range(2 * r + 1)]  # dx = i - r: (B, 2r+1, N)
        sq = torch.stack(cols, 1).reshape(b, (2 * r + 1) ** 2, n)  # dx-major, like the square index
        return sq[:, self.idx_raw]

    def global_inputs(self, q: torch.Tensor, voltage: torch.Tensor | None) -> torch.Tensor | None:
        """Per-column global features (B, lx, n_g), or None for a q-only model."""
        if self.globals is None:
            return None
        v = self.v_default.expand(q.shape[0]) if voltage is None else voltage
        return self.globals(q, v)

    def electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """g (n_i - 1/2), (B, lx, ly)."""
        return self.electronic_from_raw(q, self.raw_neighbours(q), self.global_inputs(q, voltage))

    def electronic_from_raw(self, q: torch.Tensor, raw: torch.Tensor,
                            glob: torch.Tensor | None = None) -> torch.Tensor:
        """g (n_i - 1/2) from the gathered neighbour values ``raw`` (B, n_off, lx·ly) of ``q`` and the
        per-column global features ``glob`` (B, lx, n_g) (None for a q-only model)."""
        b, lx, ly = q.shape[0], q.shape[1], q.shape[2]
        h_ = self.hidden
        m = torch.matmul(self.w_big, raw)  # (B, R, N)
        z = m[:, :h_] + m[:, -1:] * m[:, h_:2 * h_] + self.b1
        if glob is not None:
            e = torch.matmul(glob, self.w_glob).transpose(1, 2)  # (B, H, lx)
            z = (z.reshape(b, h_, lx, ly) + e.unsqueeze(3)).reshape(b, h_, lx * ly)
        if self.has_elec:
            x = torch.arange(lx, device=q.device).unsqueeze(1)
            onehot = torch.cat([(x == self.dist).to(q.dtype), ((lx - 1 - x) == self.dist).to(q.dtype)], 1)
            e = torch.matmul(self.w_elec, onehot.t())  # (H, lx)
            z = (z.reshape(b, h_, lx, ly) + e.unsqueeze(2)).reshape(b, h_, lx * ly)
        if self.n_quad:
            u = m[:, 2 * h_:2 * h_ + self.n_quad]
            z = z + torch.matmul(self.w_quad, u * u)
        if self.has_anti:
            za = m[:, 2 * h_:3 * h_]
            h = self.act(z + za) + self.act(z - za)
        else:
            h = self.act(z)
        n_layers = len(self.ws)
        for i in range(n_layers):
            h = torch.matmul(self.ws[i], h) + self.bs[i]
            if i < n_layers - 1:
                h = self.act(h)
        return h.reshape(b, lx, ly)

    def forward(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        el = self.electronic(q, voltage)
        force = el - self.k * q - self.kappa * neighbour_sum(q)
        return force, 0.5 + el / self.g


class FoldedEnsemble(nn.Module):
    """Mean electronic force of several folded models (one neighbour gather per cutoff, global features
    computed once) + elastic term; with 2+ members also the committee spread ``force_std``
    (:func:`~neqforce.training.model.local_spread` of the members' per-site std, ddof 0; force units)."""

    def __init__(self, models: list[ForceModel]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList([FoldedForceModel(m) for m in models])
        first = self.members[0]
        self.register_buffer("g", first.g.clone())
        self.register_buffer("k", first.k.clone())
        self.register_buffer("kappa", first.kappa.clone())
        kinds = {m.globals.kind if m.globals is not None else "" for m in self.members}
        if len(kinds) > 1:
            raise ValueError(f"ensemble members must share their global inputs, got {sorted(kinds)}")
        self.takes_voltage = first.takes_voltage
        self.committee = len(self.members) > 1

    def member_electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Electronic force of every member, each (B, lx, ly)."""
        raws: dict[int, torch.Tensor] = {}
        glob = self.members[0].global_inputs(q, voltage)
        out = []
        for m in self.members:
            if m.r_cut not in raws:
                raws[m.r_cut] = m.raw_neighbours(q)
            out.append(m.electronic_from_raw(q, raws[m.r_cut], glob))
        return out

    def electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack(self.member_electronic(q, voltage)).mean(0)

    def forward(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        els = torch.stack(self.member_electronic(q, voltage))
        el = els.mean(0)
        force = el - self.k * q - self.kappa * neighbour_sum(q)
        if not self.committee:
            return force, 0.5 + el / self.g
        std = (els - el.unsqueeze(0)).pow(2).mean(0).sqrt()
        return force, 0.5 + el / self.g, local_spread(std)
