"""Global (nonlocal) inputs of the voltage-range model, computed inside the graph from q in O(N).

docs/nonlocality.md: besides the distortions within r_c, the exact electronic force of a site depends
on the voltage V and on the metallic region connected to an electrode (which reservoirs it touches and
how long it is: ~1e-3 force per column at ly = 28, unbounded over 140 columns). Per lattice column x:

    m_i   = (-1)^(x+y) (Q_i - mean_nn Q) / 2            local CDW order (physics.local_order; = q0 in a
                                                          perfect CDW)
    M_x   = mean_y |m_i|                                  column order (mirror- and y-translation-invariant)
    c_x   = sigmoid((q0/2 - M_x) / (0.05 q0))             soft metallicity (the SPEC ξ criterion M < q0/2)
    P_x   = Π_{x' <= x} c_x'   = exp(cumsum log c)        column x lies in the metal connected to the left
    R_x   = Π_{x' >= x} c_x'                              … to the right electrode
    L_L   = Σ_x P_x,  L_R = Σ_x R_x                       lengths (columns) of those metallic runs
    T     = P_{lx-1}                                      the left metal reaches the right electrode

The features of a site of column x ("voltage+metal", 8 per site, in this order):
``V, L_L, P_x, P_x L_L, T, L_R, R_x, R_x L_R``; "voltage" is ``V`` alone.

"voltage+metal+range" adds a long-range channel along x (docs/nonlocality.md §5: in the current-carrying
CDW ahead of a wall the exact force still responds to configuration more than 12 columns away). Per column
three statistics, ``M_x`` (order), ``qbar_x = mean_y Q`` (the k_y = 0 mode of the distortion) and
``D_x = mean_y m² - (mean_y m)²`` (disorder of the order across the column: thermal in-gap states), and the
indicator ``I_x = 1`` of a column inside the device; each is averaged over bins of columns x + d beyond the
local cutoff, d ∈ ±[9, 10], ±[11, 13], ±[14, 17], ±[18, 23], ±[24, 31], ±[32, 47] (columns beyond an
electrode count as 0, so ``I`` is the fraction of the bin inside the device: the electrode distance out to
47 columns). 48 features; the first layer's weights on them are a learned linear filter along x of width
95 columns, evaluated per column. Every one is a function of
column averages, hence invariant under the mirror y → -y and y-translations; each costs O(N) (a mean over
y, a cumulative sum over x). Smooth in q (sigmoids), so BD forces stay continuous. A metallic domain not
connected to an electrode is seen only through the local descriptor (docs/ml_model.md).
"""

from __future__ import annotations

import torch
from torch import nn

#: Global-feature sets: name → feature names (per site, in order).
GLOBAL_FEATURES: dict[str, tuple[str, ...]] = {
    "": (),
    "voltage": ("V",),
    "voltage+metal": ("V", "L_left", "P_x", "P_x*L_left", "touch", "L_right", "R_x", "R_x*L_right"),
}
#: Offset bins (first, last column offset, inclusive) of the long-range channel, right of the site; the
#: left bins are their mirror images. All beyond r_c = 8 (the local descriptor sees nearer columns).
RANGE_BINS: tuple[tuple[int, int], ...] = ((9, 10), (11, 13), (14, 17), (18, 23), (24, 31), (32, 47))
RANGE_STATS: tuple[str, ...] = ("M", "qbar", "D", "I")
_BINS_LR = [(-b, -a) for a, b in RANGE_BINS] + list(RANGE_BINS)
GLOBAL_FEATURES["voltage+metal+range"] = GLOBAL_FEATURES["voltage+metal"] + tuple(
    f"{st}[{lo}:{hi}]" for lo, hi in _BINS_LR for st in RANGE_STATS)
#: Row channel (prototype, training only: docs/nonlocality.md §7): per site, bin means along x of two
#: row statistics at the site's row and the rows ±1, ±2 (each pair averaged: mirror-invariant).
ROW_OFFSETS: tuple[int, ...] = (0, 1, 2)
ROW_STATS: tuple[str, ...] = ("s_i*m", "q")
#: Per-site features of a kind (the rest of its features are per column).
SITE_FEATURES: dict[str, tuple[str, ...]] = {"voltage+metal+range+rows": tuple(
    f"row{dy}:{st}[{lo}:{hi}]" for lo, hi in _BINS_LR for dy in ROW_OFFSETS for st in ROW_STATS)}
GLOBAL_FEATURES["voltage+metal+range+rows"] = (GLOBAL_FEATURES["voltage+metal+range"]
                                                + SITE_FEATURES["voltage+metal+range+rows"])
#: Width of the soft metallicity step, in units of q0 (c = 0.9997 at M = 0.1 q0, 5e-5 at M = q0).
SOFT_WIDTH = 0.05
#: log c is clamped here so that a fully ordered column gives exp(-30), never log(0) = -inf.
LOG_FLOOR = -30.0
#: Row alignment (floats) of the batch-invariant copy's element-wise transcendental functions: a multiple
#: of every CPU vector width ONNX Runtime uses (AVX-512: 16 floats).
ALIGN = 32


def n_global(kind: str) -> int:
    """Number of global features per site of a set (0 for '')."""
    if kind not in GLOBAL_FEATURES:
        known = ", ".join(repr(k) for k in GLOBAL_FEATURES)
        raise ValueError(f"unknown global features {kind!r} (known: {known})")
    return len(GLOBAL_FEATURES[kind])


def n_site(kind: str) -> int:
    """Number of the set's features that vary along y (the last ones); 0 for per-column sets."""
    return len(SITE_FEATURES.get(kind, ()))


def needs_voltage(kind: str) -> bool:
    """Whether a model with these global features takes the voltage as an input."""
    return "V" in GLOBAL_FEATURES.get(kind, ())


def _neighbour_sum(q: torch.Tensor) -> torch.Tensor:
    """Σ_nn Q (open in x, periodic in y; no y-bonds when ly = 1), (B, lx, ly)."""
    p = nn.functional.pad(q, (0, 0, 1, 1))
    lx, ly = q.shape[-2], q.shape[-1]
    y = torch.arange(ly, device=q.device)
    up, down = torch.remainder(y + 1, ly), torch.remainder(y - 1, ly)
    has_bonds = (up != y).to(q.dtype)
    return p[:, :lx] + p[:, 2:] + (q[:, :, up] + q[:, :, down]) * has_bonds


class GlobalFeatures(nn.Module):
    """q (B, lx, ly), voltage (B,) → per-column features (B, lx, n_g) (module docstring).

    ``q0`` is the bulk CDW amplitude of the model's physical parameters (it does not depend on V).
    ``batch_invariant`` (set on the copy the ONNX export traces, :mod:`neqforce.training.folded`): the
    sums over x (the lengths L) and the mean over y (M_x) are read off cumulative sums. ONNX Runtime's
    ReduceSum/ReduceMean round differently for different batch sizes (measured: the sum over x at 30×28,
    the mean over y at 17×9), a cumulative sum runs in order for each lattice whatever the batch, so every
    lattice of a batch gets the floats it gets alone (the same function, float32 rounding of the sums
    apart; checked at export, :func:`neqforce.training.export.check_batch_invariance`).
    """

    def __init__(self, kind: str, q0: float, batch_invariant: bool = False) -> None:
        super().__init__()
        self.kind, self.n = kind, n_global(kind)
        self.batch_invariant = batch_invariant
        self.register_buffer("q0", torch.tensor(float(q0)), persistent=False)
        reach = RANGE_BINS[-1][1]
        hi_rows, lo_rows = [reach + 1 + hi for _, hi in _BINS_LR], [reach + lo for lo, _ in _BINS_LR]
        self.register_buffer("range_hi", torch.tensor(hi_rows), persistent=False)
        self.register_buffer("range_lo", torch.tensor(lo_rows), persistent=False)
        self.register_buffer("range_width", torch.tensor([[hi - lo + 1.0] for lo, hi in _BINS_LR]),
                             persistent=False)  # (n_bins, 1)

    def local_order(self, q: torch.Tensor) -> torch.Tensor:
        """m_i = (-1)^(x+y) (Q_i - mean_nn Q) / 2, (B, lx, ly)."""
        lx, ly = q.shape[-2], q.shape[-1]
        x = torch.arange(lx, device=q.device).unsqueeze(1)
        y = torch.arange(ly, device=q.device).unsqueeze(0)
        sign = 1.0 - 2.0 * torch.remainder(x + y, 2).to(q.dtype)
        count = _neighbour_sum(torch.ones_like(q[:1]))
        return sign * (q - _neighbour_sum(q) / count) * 0.5

    def _mean_y(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over y, (B, lx, ly) → (B, lx); in y order whatever the batch when batch-invariant."""
        if self.batch_invariant:  # class docstring
            return torch.cumsum(t, dim=-1)[..., -1] / t.shape[-1]
        return t.mean(dim=-1)

    def column_order(self, q: torch.Tensor) -> torch.Tensor:
        """M_x = mean_y |m|, (B, lx)."""
        return self._mean_y(self.local_order(q).abs())

    def range_channel(self, q: torch.Tensor) -> torch.Tensor:
        """Bin means of (M, qbar, D, I) at the offsets of :data:`RANGE_BINS`, left bins then right ones,
        (B, lx, 48) (module docstring)."""
        m = self.local_order(q)
        mean_m = self._mean_y(m)
        stats = torch.stack([self._mean_y(m.abs()), self._mean_y(q), self._mean_y(m * m) - mean_m * mean_m,
                             torch.ones_like(mean_m)], dim=-1)  # (B, lx, 4)
        return self._bin_means(stats).flatten(2)

    def _bin_means(self, t: torch.Tensor) -> torch.Tensor:
        """Means of ``t`` (B, lx, …) over the columns x + lo … x + hi of every bin (left bins, then right
        ones; columns beyond an electrode count as 0), (B, lx, n_bins, …). Bin sums are differences of one
        cumulative sum along x (in x order for each lattice: batch-invariant)."""
        lx, rest = t.shape[1], t.dim() - 2
        reach = RANGE_BINS[-1][1]
        padded = nn.functional.pad(t, (0, 0) * rest + (reach + 1, reach))  # a leading 0 row for the cumsum
        csum = torch.cumsum(padded, dim=1)  # row j: sum of columns ≤ j - R - 1, (B, lx + 2R + 1, …)
        # columns x + lo … x + hi sit at padded rows x + lo + R + 1 … x + hi + R + 1: one gather per end
        x = torch.arange(lx, device=t.device).unsqueeze(1)
        top = csum[:, x + self.range_hi]  # (B, lx, n_bins, …)
        bottom = csum[:, x + self.range_lo]
        width = self.range_width.reshape(-1, *([1] * rest))  # (n_bins, 1, …)
        return (top - bottom) / width

    def row_channel(self, q: torch.Tensor) -> torch.Tensor:
        """Per-site long-range channel (prototype, ``+rows``): for each bin of :data:`RANGE_BINS` (left,
        right) and each row offset dy of :data:`ROW_OFFSETS`, the bin means along x, on rows y ± dy
        (averaged), of ``s_i m_j`` (the local order relative to the site's own sublattice sign s_i =
        (-1)^(x+y): invariant under y-translations) and of ``q``. (B, lx, ly, 72); O(N) per row."""
        lx, ly = q.shape[1], q.shape[2]
        m = self.local_order(q)  # (-1)^(x+y) … : s_j m'_j
        binned = self._bin_means(torch.stack([m, q], dim=-1))  # (B, lx, n_bins, ly, 2)
        # the site's own sign turns s_j m into s_i s_j m (relative)
        x = torch.arange(lx, device=q.device).unsqueeze(1)
        y = torch.arange(ly, device=q.device)
        sign = 1.0 - 2.0 * torch.remainder(x + y.unsqueeze(0), 2).to(q.dtype)  # (lx, ly)
        rows = []
        for dy in ROW_OFFSETS:
            up, down = torch.remainder(y + dy, ly), torch.remainder(y - dy, ly)
            rows.append(0.5 * (binned[:, :, :, up] + binned[:, :, :, down]))
        out = torch.stack(rows, dim=3)  # (B, lx, n_bins, n_dy, ly, 2)
        out = torch.cat([out[..., :1] * sign[None, :, None, None, :, None], out[..., 1:]], dim=-1)
        return out.permute(0, 1, 4, 2, 3, 5).reshape(q.shape[0], lx, ly, -1)

    def _elementwise(self, fn, t: torch.Tensor) -> torch.Tensor:
        """``fn`` (element-wise, transcendental) of a (B, lx) tensor. Batch-invariant copy: each lattice's
        row is padded to a multiple of :data:`ALIGN` columns first, so that every element is computed in
        the same SIMD lane arrangement whatever the batch (ONNX Runtime's vectorized Log/Exp round the
        partial vector at the end of a buffer differently: a lattice of a batch would otherwise get
        other floats than alone whenever lx is not a multiple of the vector width)."""
        if not self.batch_invariant:
            return fn(t)
        lx = t.shape[1]
        return fn(nn.functional.pad(t, (0, (ALIGN - lx % ALIGN) % ALIGN)))[:, :lx]

    def forward(self, q: torch.Tensor, voltage: torch.Tensor) -> torch.Tensor:
        b, lx = q.shape[0], q.shape[1]
        v = voltage.to(q.dtype).reshape(-1, 1, 1).expand(b, lx, 1)
        if self.kind == "voltage":
            return v
        z = (0.5 * self.q0 - self.column_order(q)) / (SOFT_WIDTH * self.q0)
        logc = self._elementwise(lambda t: nn.functional.logsigmoid(t).clamp_min(LOG_FLOOR), z)  # (B, lx)
        p = self._elementwise(torch.exp, torch.cumsum(logc, dim=1))
        r = torch.flip(self._elementwise(torch.exp, torch.cumsum(torch.flip(logc, [1]), dim=1)), [1])
        if self.batch_invariant:
            ll = torch.cumsum(p, dim=1)[:, -1:].expand(b, lx)
            lr = torch.cumsum(r, dim=1)[:, -1:].expand(b, lx)
        else:
            ll = p.sum(dim=1, keepdim=True).expand(b, lx)
            lr = r.sum(dim=1, keepdim=True).expand(b, lx)
        touch = p[:, -1:].expand(b, lx)
        feats = [ll, p, p * ll, touch, lr, r, r * lr]
        out = torch.cat([v, torch.stack(feats, dim=-1)], dim=-1)
        if self.kind.startswith("voltage+metal+range"):
            out = torch.cat([out, self.range_channel(q)], dim=-1)
        return out
