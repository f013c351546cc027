"""Inference form of a trained :class:`ForceModel`: normalization and descriptor folded into convolutions.

Every feature of the first layer is linear in the neighbour values Q_j (offsets within r_c: the mirror
line, the pairs above it and their mirror images below, :func:`neqforce.training.descriptors.offsets`),
except G_A'' = f_A'' f_ref, whose first-layer contribution W_G · (f_A'' f_ref) = f_ref · (W_G · f_A'') is a
linear map times the linear scalar f_ref. The weights of a mirror pair act on the pair's sum (line and
f_A' weights, ``w_ls``) or on its difference (G_A'', A'' and the learned invariants' weights, ``w_a``), so
per site of column x, row y, with S_dy = Q(·, y + dy) + Q(·, y − dy) and A_dy = Q(·, y + dy) − Q(·, y − dy):

    M_ls = b1 + Σ_dx w_line[dx] Q(x+dx, y) + Σ_(dx,dy>0) w_sym[dx,dy] S_dy(x+dx, y)     (H rows per member)
    M_a  =      Σ_(dx,dy>0) w_a[dx,dy] A_dy(x+dx, y)                                   (G, A'', K rows)
    f_ref = mean over the pairs of A_dy(x+dx, y)
    z = M_ls + f_ref · M_G + E[x],   h1 = φ(z + M_A'') + φ(z − M_A'')  (or φ(z) + quadratic invariants)

That is three convolutions, which ONNX Runtime runs without materializing the neighbourhood of each site:
a 1 × (2 r_c + 1) stencil along y turns the lattice (zero-padded by r_c columns in x: Q beyond the
electrodes reads 0; extended periodically by r_c rows in y: any ly) into the 1 + 2 r_c planes Q, S_dy, A_dy,
then a (2 r_c + 1) × 1 convolution along x of the planes Q, S_dy gives M_ls and one of the planes A_dy gives
M_a and f_ref — for all members of a committee at once (their rows stacked). E[x] is the first-layer weight
of the electrode one-hot features of column x plus, for a model with global inputs (voltage, metallic runs,
long-range channel: training/global_features.py), W_g · g[x]: per column, O(lx). Standardization of
features and target is folded into the weights. Layout channels-first (B, C, lx·ly): the hidden layers are
GEMMs. Before package 0.5.3 the graph gathered the (2 r_c + 1)² square of every site and multiplied it by
one (3H + 1) × n_off matrix per member: the same function, 1.5–1.7× dearer (docs/ml_model.md, "Inference
graph and export"). It computes the same function as :class:`ForceModel` (tested to float32 rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from .descriptors import offsets
from .global_features import GlobalFeatures, n_site
from .model import ACTIVATIONS, ForceModel, local_spread, neighbour_sum


class FoldedForceModel(nn.Module):
    """One member's folded weights and the layers after the first; :meth:`forward` q (B, lx, ly) float32
    [, voltage (B,) float32] → (force, density), each (B, lx, ly) (module docstring)."""

    def __init__(self, model: ForceModel) -> None:
        super().__init__()
        cfg = model.config
        if model.globals is not None and n_site(model.globals.kind):
            raise ValueError(f"global features {model.globals.kind!r} have per-site inputs (the row-channel "
                             "prototype): not exportable to ONNX yet")
        self.r_cut = cfg.r_cut
        off = offsets(cfg.r_cut)
        n_line, n_pair = len(off.line), len(off.top)
        with torch.no_grad():
            first = model.net.first
            n_s, n_desc = model.s_mean.shape[0], model.n_desc  # all invariant inputs / descriptor ones
            w_quad = first.weight[:, n_s:]  # (H, K) weights of the quadratic A'' invariants (K may be 0)
            w1 = first.weight[:, :n_s] / model.s_std  # (H, n_s): standardization folded in
            b1 = first.bias - w1 @ model.s_mean
            h = w1.shape[0]
            # line and pair-sum weights (f_A' = Q_j + Q_ĵ) / pair-difference weights (f_A'' = Q_j − Q_ĵ)
            a_rows = [w1[:, n_line + n_pair:n_line + 2 * n_pair]]  # G_A'' (times f_ref)
            self.has_anti = model.net.first_anti is not None
            if self.has_anti:
                a_rows.append(model.net.first_anti.weight / model.a_std)
            self.n_quad = w_quad.shape[1]
            if self.n_quad:
                a_rows.append(model.net.anti_proj.weight / model.a_std)  # (K, n_a)
            self.register_buffer("w_ls", w1[:, :n_line + n_pair].contiguous())  # (H, n_line + n_pair)
            self.register_buffer("w_a", torch.cat(a_rows, 0).contiguous())  # (H [+ H | + K], n_pair)
            self.register_buffer("w_quad", w_quad.contiguous())
            self.register_buffer("b1", b1.contiguous())  # (H,)
            n_elec = n_desc - (n_line + 2 * n_pair)
            self.has_elec = n_elec > 0
            self.register_buffer("w_elec", w1[:, n_line + 2 * n_pair:n_desc].contiguous())  # (H, 2r)
            self.register_buffer("w_glob", w1[:, n_desc:].contiguous())  # (H, n_g)
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

    def global_inputs(self, q: torch.Tensor, voltage: torch.Tensor | None) -> torch.Tensor | None:
        """Per-column global features (B, lx, n_g), or None for a q-only model."""
        if self.globals is None:
            return None
        v = self.v_default.expand(q.shape[0]) if voltage is None else voltage
        return self.globals(q, v)

    def tail(self, z: torch.Tensor, m_a: torch.Tensor) -> torch.Tensor:
        """Electronic force g (n_i − 1/2), (B, N), from the first layer's pre-activation ``z`` (B, H, N)
        (f_ref · M_G and the column terms included) and this member's other difference rows ``m_a``
        (B, H (A'') | K (learned invariants) | 0, N)."""
        if self.n_quad:
            z = z + torch.matmul(self.w_quad, m_a * m_a)
        if self.has_anti:
            h = self.act(z + m_a) + self.act(z - m_a)
        else:
            h = self.act(z)
        n_layers = len(self.ws)
        for i in range(n_layers):
            h = torch.matmul(self.ws[i], h) + self.bs[i]
            if i < n_layers - 1:
                h = self.act(h)
        return h[:, 0]

    def forward(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return FoldedEnsemble.of_folded([self])(q, voltage)


class FirstLayer(nn.Module):
    """The first-layer products of members sharing r_c, as three convolutions (module docstring): their
    ``w_ls`` rows stacked into one (ΣH, 1 + r, 2r + 1, 1) kernel (b1 as its bias), their ``w_a`` rows — all
    members' G_A'' rows first, then each member's other rows — and the f_ref row into one
    (ΣR_a + 1, r, 2r + 1, 1) kernel; plus the per-column weights (global inputs, electrode one-hots)."""

    def __init__(self, members: list[FoldedForceModel]) -> None:
        super().__init__()
        r = self.r = members[0].r_cut
        if any(m.r_cut != r for m in members):
            raise ValueError("members of one first layer must share r_cut")
        off = offsets(r)
        n_line, n_pair = len(off.line), len(off.top)
        self.heights = [m.hidden for m in members]
        self.other = [m.w_a.shape[0] - m.hidden for m in members]  # A'' / K rows of each member
        w_ls = torch.cat([m.w_ls for m in members])
        w_a = torch.cat([m.w_a[:m.hidden] for m in members] + [m.w_a[m.hidden:] for m in members]
                        + [torch.full((1, n_pair), 1.0 / n_pair)])  # last row: f_ref
        k_ls = torch.zeros(len(w_ls), 1 + r, 2 * r + 1, 1)
        k_ls[:, 0, torch.as_tensor(off.line[:, 0] + r), 0] = w_ls[:, :n_line]
        dx, dy = torch.as_tensor(off.top[:, 0] + r), torch.as_tensor(off.top[:, 1])
        k_ls[:, dy, dx, 0] = w_ls[:, n_line:]
        k_a = torch.zeros(len(w_a), r, 2 * r + 1, 1)
        k_a[:, dy - 1, dx, 0] = w_a
        # the y stencil: plane 0 = Q, planes 1 … r = S_dy, planes r + 1 … 2r = A_dy
        k_y = torch.zeros(1 + 2 * r, 1, 1, 2 * r + 1)
        k_y[0, 0, 0, r] = 1.0
        for d in range(1, r + 1):
            k_y[d, 0, 0, r + d] = k_y[d, 0, 0, r - d] = 1.0
            k_y[r + d, 0, 0, r + d], k_y[r + d, 0, 0, r - d] = 1.0, -1.0
        self.register_buffer("k_y", k_y)
        self.register_buffer("k_ls", k_ls.contiguous())
        self.register_buffer("b_ls", torch.cat([m.b1 for m in members]))
        self.register_buffer("k_a", k_a.contiguous())
        self.has_glob = members[0].w_glob.shape[1] > 0
        self.register_buffer("w_glob", torch.cat([m.w_glob for m in members]).t().contiguous())  # (n_g, ΣH)
        self.has_elec = members[0].has_elec
        if any(m.has_elec != self.has_elec for m in members):
            raise ValueError("members of one first layer must all have electrode features or none")
        self.register_buffer("w_elec", torch.cat([m.w_elec for m in members]))  # (ΣH, 2r)
        self.register_buffer("dist", torch.arange(r, dtype=torch.int64), persistent=False)

    def forward(self, q: torch.Tensor, glob: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(z (B, ΣH, N): pre-activations of all members, b1 + f_ref · M_G + column terms included;
        each member's other difference rows (B, R, N))."""
        r = self.r
        b, lx, ly = q.shape[0], q.shape[1], q.shape[2]
        n = lx * ly
        p = nn.functional.pad(q, (0, 0, r, r))  # (B, lx + 2r, ly): Q beyond the electrodes reads 0
        rows = torch.remainder(torch.arange(-r, ly + r, device=q.device), ly)  # y periodic, any ly
        planes = nn.functional.conv2d(p[:, :, rows].unsqueeze(1), self.k_y)  # (B, 1 + 2r, lx + 2r, ly)
        m_ls = nn.functional.conv2d(planes[:, :r + 1], self.k_ls, self.b_ls)  # (B, ΣH, lx, ly)
        m_a = nn.functional.conv2d(planes[:, r + 1:], self.k_a).reshape(b, -1, n)  # (B, ΣR_a + 1, N)
        h_all = len(self.b_ls)
        z = m_ls + (m_a[:, -1:] * m_a[:, :h_all]).reshape(b, h_all, lx, ly)
        col = None
        if self.has_glob and glob is not None:
            col = torch.matmul(glob, self.w_glob).transpose(1, 2)  # (B, ΣH, lx)
        if self.has_elec:
            x = torch.arange(lx, device=q.device).unsqueeze(1)
            onehot = torch.cat([(x == self.dist).to(q.dtype), ((lx - 1 - x) == self.dist).to(q.dtype)], 1)
            e = torch.matmul(self.w_elec, onehot.t())  # (ΣH, lx)
            col = e if col is None else col + e
        if col is not None:
            z = z + col.unsqueeze(-1)
        z = z.reshape(b, h_all, n)
        others, start = [], h_all
        for k in self.other:
            others.append(m_a[:, start:start + k])
            start += k
        return z, others


class FoldedEnsemble(nn.Module):
    """Mean electronic force of several folded models (one :class:`FirstLayer` per cutoff, global features
    computed once) + elastic term; with 2+ members also the committee spread ``force_std``
    (:func:`~neqforce.training.model.local_spread` of the members' per-site std, ddof 0; force units).
    One member: (force, density), what a single model exports."""

    def __init__(self, models: list[ForceModel] | None = None) -> None:
        super().__init__()
        if models is not None:
            self._build([FoldedForceModel(m) for m in models])

    @classmethod
    def of_folded(cls, members: list[FoldedForceModel]) -> FoldedEnsemble:
        """An ensemble of already folded members (their weights shared, not copied)."""
        ens = cls()
        ens._build(members)
        return ens

    def _build(self, members: list[FoldedForceModel]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        first = self.members[0]
        self.register_buffer("g", first.g.clone())
        self.register_buffer("k", first.k.clone())
        self.register_buffer("kappa", first.kappa.clone())
        kinds = {m.globals.kind if m.globals is not None else "" for m in self.members}
        if len(kinds) > 1:
            raise ValueError(f"ensemble members must share their global inputs, got {sorted(kinds)}")
        self.takes_voltage = first.takes_voltage
        self.committee = len(self.members) > 1
        self.refold()

    def refold(self) -> None:
        """(Re)build the stacked first layers from the members' weights (after loading new ones)."""
        cuts = sorted({m.r_cut for m in self.members})
        self.group_of = [[i for i, m in enumerate(self.members) if m.r_cut == r] for r in cuts]
        self.first = nn.ModuleList([FirstLayer([self.members[i] for i in idx]) for idx in self.group_of])

    def member_electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Electronic force of every member, each (B, lx, ly)."""
        glob = self.members[0].global_inputs(q, voltage)
        out: list[torch.Tensor | None] = [None] * len(self.members)
        for idx, layer in zip(self.group_of, self.first, strict=True):
            z, others = layer(q, glob)
            start = 0
            for i, m_a in zip(idx, others, strict=True):
                m = self.members[i]
                out[i] = m.tail(z[:, start:start + m.hidden], m_a).reshape(q.shape)
                start += m.hidden
        return out  # type: ignore[return-value]

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
