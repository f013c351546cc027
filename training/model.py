"""Torch force model: lattice Q → (total force, density), exportable to ONNX (SPEC §9).

    q (B, lx, ly) ──descriptor──▶ invariant s (B, lx, ly, n_s), antisymmetric a (B, lx, ly, n_a)
    q, voltage (B,) ──global features (optional, training/global_features.py)──▶ appended to s
                  ──C_s-averaged MLP──▶ electronic force g (n - 1/2)  (B, lx, ly)
    force = electronic + (-k Q - kappa Σ_nn Q)   (exact elastic part, SPEC §2)
    density = 1/2 + electronic / g

The first layer is averaged over the mirror group C_s = {1, σ}: h = φ(W_s s + W_a a + b) +
φ(W_s s - W_a a + b). Since σ maps (s, a) → (s, -a), h and everything after it are invariant. With
n_a = 0 (the paper's descriptor) it is a plain MLP. All ops are gathers, slices and matmuls with
dynamic lx, ly, batch, so ``torch.onnx.export`` yields one graph for any lattice.

Only training code imports this module (it needs torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .descriptors import DESCRIPTORS, R_CUT, descriptor_name, n_features, offsets
from .global_features import GlobalFeatures, n_global, n_site, needs_voltage

Pair = tuple[torch.Tensor, torch.Tensor]
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: descriptor kind ('paper' | 'device'), hidden widths, activation, cutoff."""

    descriptor: str = "device"
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "silu"
    r_cut: int = R_CUT
    anti_rank: int = 0  # A'' block: 0 → C_s-averaged first layer; K > 0 → K learned invariants (v_k·a)²
    extra: dict = field(default_factory=dict)
    #: Global inputs (training/global_features.py): '' none (q only), 'voltage', 'voltage+metal'.
    global_features: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{"anti_rank": 0, "global_features": "", **d, "hidden": tuple(d["hidden"])})

    @property
    def takes_voltage(self) -> bool:
        """Whether the model has the voltage as an input (ONNX input ``voltage``)."""
        return needs_voltage(self.global_features)

    @property
    def descriptor_name(self) -> str:
        return descriptor_name(self.descriptor, self.r_cut)

    def graph_macs_per_site(self) -> int:
        """Multiply-adds per site of the exported (folded) graph as ONNX Runtime runs it
        (training/folded.py): the convolution along x of the 1 + r planes Q, S_dy with the H rows of the
        line and pair-sum weights, and of the r planes A_dy with the R_a = H (G_A'') [+ H (A'' average) |
        + K] difference rows, zero taps outside the disk included ((2 r + 1) taps per plane), then the
        hidden layers. Shared by the members of a committee and not counted: the y stencil and the f_ref
        row, ~(1 + 2r)(2r + 1) + r(2r + 1) per site; global inputs are per column, not per site."""
        r = self.r_cut
        n_a = n_features(self.descriptor, r)[1]
        h = self.hidden[0]
        rows_a = h + (h if n_a and not self.anti_rank else 0) + (self.anti_rank if n_a else 0)
        macs = (h * (1 + r) + rows_a * r) * (2 * r + 1) + (self.anti_rank * h if n_a else 0)
        widths = [*self.hidden, 1]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            macs += a * b
        return macs

    def macs_per_site(self) -> int:
        """Multiply-adds per site of the network (first layer counted twice for the A'' block)."""
        n_s, n_a = n_features(self.descriptor, self.r_cut)
        widths = [*self.hidden, 1]
        if n_a and self.anti_rank:
            macs = n_a * self.anti_rank + (n_s + self.anti_rank) * widths[0]
        else:
            macs = (n_s + 2 * n_a) * widths[0]
        macs += n_global(self.global_features) * widths[0]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            macs += a * b
        return macs


#: Named architectures. ``paper``: Table I of the paper (113→4096→…→64→1, ReLU) on the paper's
#: descriptor. ``compact``: the default, chosen by the accuracy/cost measurements in docs/ml_model.md.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(descriptor="paper", hidden=(4096, 2048, 1024, 512, 256, 128, 64, 64),
                         activation="relu"),
    "compact": ModelConfig(descriptor="paper+elec", hidden=(32, 64), activation="silu", r_cut=10),
    # voltage-range model (issue 10, docs/ml_model.md): V and the metallic runs connected to the electrodes
    "voltage": ModelConfig(descriptor="paper+elec", hidden=(32, 64), activation="silu", r_cut=8,
                           global_features="voltage+metal"),
    # + a long-range channel along x: bin means of column statistics out to 47 columns (nonlocality.md §5)
    "range": ModelConfig(descriptor="paper+elec", hidden=(32, 64), activation="silu", r_cut=8,
                         global_features="voltage+metal+range"),
    # prototype, training only (no ONNX export): + a per-site row channel (docs/nonlocality.md §7)
    "rows": ModelConfig(descriptor="paper+elec", hidden=(32, 64), activation="silu", r_cut=8,
                        global_features="voltage+metal+range+rows"),
}


class Descriptor(nn.Module):
    """Torch twin of :mod:`neqforce.training.descriptors` for a batch of lattices.

    forward(q (B, lx, ly)) → (s (B, lx, ly, n_s), a (B, lx, ly, n_a)); x outside the lattice reads 0,
    y is periodic (wrapping as often as needed for small ly).
    """

    def __init__(self, kind: str = "device", r_cut: int = R_CUT) -> None:
        super().__init__()
        if kind not in DESCRIPTORS:
            raise ValueError(f"unknown descriptor {kind!r} (known: {', '.join(DESCRIPTORS)})")
        self.kind, self.r_cut = kind, r_cut
        off = offsets(r_cut)
        w = 2 * r_cut + 1

        def flat(o: np.ndarray) -> torch.Tensor:  # index into the (2r+1)² square, dx-major
            return torch.as_tensor((o[:, 0] + r_cut) * w + (o[:, 1] + r_cut), dtype=torch.int64)

        self.register_buffer("idx_line", flat(off.line), persistent=False)
        self.register_buffer("idx_top", flat(off.top), persistent=False)
        self.register_buffer("idx_bottom", flat(off.bottom), persistent=False)
        self.register_buffer("dy", torch.arange(-r_cut, r_cut + 1, dtype=torch.int64), persistent=False)
        self.register_buffer("dist", torch.arange(r_cut, dtype=torch.int64), persistent=False)
        self.n_top = len(off.top)

    def square(self, q: torch.Tensor) -> torch.Tensor:
        """Q at (x + dx, y + dy) for the (2r+1)² square of offsets: (B, lx, ly, (2r+1)²)."""
        r = self.r_cut
        lx, ly = q.shape[-2], q.shape[-1]
        p = nn.functional.pad(q, (0, 0, r, r))  # zeros beyond the electrodes: (B, lx + 2r, ly)
        yidx = torch.remainder(torch.arange(ly, device=q.device).unsqueeze(1) + self.dy, ly)  # (ly, 2r+1)
        yg = p[:, :, yidx]  # (B, lx + 2r, ly, 2r+1)
        cols = [yg[:, i:i + lx] for i in range(2 * r + 1)]  # dx = i - r
        sq = torch.stack(cols, dim=3)  # (B, lx, ly, 2r+1 [dx], 2r+1 [dy])
        return sq.flatten(3)

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq = self.square(q)
        line = sq[..., self.idx_line]
        top = sq[..., self.idx_top]
        bot = sq[..., self.idx_bottom]
        anti = top - bot
        f_ref = anti.sum(dim=-1, keepdim=True) / self.n_top  # Q_t - Q_b (means over 50 offsets each)
        inv = torch.cat([line, top + bot, anti * f_ref], dim=-1)
        if self.kind == "paper":
            return inv, anti[..., :0]
        lx = q.shape[-2]
        x = torch.arange(lx, device=q.device).unsqueeze(1)
        elec = torch.cat([(x == self.dist).to(q.dtype), ((lx - 1 - x) == self.dist).to(q.dtype)], dim=1)
        elec = elec.unsqueeze(0).unsqueeze(2).expand(q.shape[0], lx, q.shape[-1], 2 * self.r_cut)
        return torch.cat([inv, elec], dim=-1), (anti if self.kind == "device" else anti[..., :0])


class SymmetrizedMLP(nn.Module):
    """MLP on invariant features s and odd features a, invariant under a → -a.

    anti_rank = 0: the first layer is averaged over C_s, φ(W_s s + W_a a + b) + φ(W_s s - W_a a + b).
    anti_rank = K > 0: K learned quadratic invariants (v_k · a)² join s at the input instead.
    """

    def __init__(self, n_inv: int, n_anti: int, hidden: tuple[int, ...], activation: str,
                 anti_rank: int = 0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("at least one hidden layer is needed")
        act = ACTIVATIONS[activation]
        self.anti_proj = nn.Linear(n_anti, anti_rank, bias=False) if n_anti and anti_rank else None
        self.first = nn.Linear(n_inv + (anti_rank if self.anti_proj is not None else 0), hidden[0])
        self.first_anti = nn.Linear(n_anti, hidden[0], bias=False) if n_anti and not anti_rank else None
        self.act = act()
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(hidden[-1], 1))
        self.rest = nn.Sequential(*layers)

    def hidden(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (…, hidden[-1]): a learned, a → -a invariant summary of the
        site's inputs, which the output layer maps linearly to the force."""
        if self.anti_proj is not None:
            u = self.anti_proj(a)
            s = torch.cat([s, u * u], dim=-1)
        z = self.first(s)
        if self.first_anti is None:
            h = self.act(z)
        else:
            za = self.first_anti(a)
            h = self.act(z + za) + self.act(z - za)
        return self.rest[:-1](h)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.rest[-1](self.hidden(s, a)).squeeze(-1)


class ForceModel(nn.Module):
    """Lattice → (force, density) with feature standardization and the exact elastic term.

    Buffers (set by training from the training set): ``s_mean``, ``s_std`` (invariant features, the
    global ones last), ``a_std`` (antisymmetric features: scaled only, so they stay odd), ``y_mean``,
    ``y_std`` (electronic force g (n - 1/2)), and the physical constants ``g``, ``k``, ``kappa``.
    With global features, ``voltage`` (B,) is an input; when omitted, ``v_default`` (the voltage of the
    model's parameters) is used. ``q0``: bulk CDW amplitude of the parameters (metallicity criterion).
    """

    def __init__(self, config: ModelConfig, g: float, k: float, kappa: float, voltage: float = 3.0,
                 q0: float = 2.3855) -> None:
        super().__init__()
        self.config = config
        n_s, n_a = n_features(config.descriptor, config.r_cut)
        self.n_desc = n_s
        self.globals = GlobalFeatures(config.global_features, q0) if config.global_features else None
        n_s += n_global(config.global_features)
        self.descriptor = Descriptor(config.descriptor, config.r_cut)
        self.register_buffer("v_default", torch.tensor(float(voltage)), persistent=False)
        self.net = SymmetrizedMLP(n_s, n_a, config.hidden, config.activation, config.anti_rank)
        self.register_buffer("s_mean", torch.zeros(n_s))
        self.register_buffer("s_std", torch.ones(n_s))
        self.register_buffer("a_std", torch.ones(n_a))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.register_buffer("g", torch.tensor(float(g)))
        self.register_buffer("k", torch.tensor(float(k)))
        self.register_buffer("kappa", torch.tensor(float(kappa)))

    def head(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Normalized network output from raw features (used by training on precomputed features)."""
        return self.net((s - self.s_mean) / self.s_std, a / self.a_std)

    def voltages(self, q: torch.Tensor, voltage: torch.Tensor | None) -> torch.Tensor:
        """The voltage of every lattice of the batch, (B,): ``voltage`` or the model's default."""
        if voltage is None:
            return self.v_default.to(q.dtype).expand(q.shape[0])
        return torch.as_tensor(voltage, dtype=q.dtype, device=q.device).reshape(-1).expand(q.shape[0])

    def features(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> Pair:
        """Raw (invariant [descriptor, global], antisymmetric) features, (B, lx, ly, ·) each."""
        s, a = self.descriptor(q)
        if self.globals is not None:
            g = self.globals(q, self.voltages(q, voltage))  # (B, lx, n_g)
            s = torch.cat([s, g.unsqueeze(2).expand(-1, -1, q.shape[-1], -1)], dim=-1)
            if n_site(self.globals.kind):  # per-site inputs (the row channel prototype), last
                s = torch.cat([s, self.globals.row_channel(q)], dim=-1)
        return s, a

    def electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """Learned electronic force g (n_i - 1/2), (B, lx, ly)."""
        s, a = self.features(q, voltage)
        return self.head(s, a) * self.y_std + self.y_mean

    def elastic(self, q: torch.Tensor) -> torch.Tensor:
        """-k Q_i - kappa Σ_nn Q_j: open in x, periodic in y (no y-bonds when ly = 1)."""
        return -self.k * q - self.kappa * neighbour_sum(q)

    def forward(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> Pair:
        el = self.electronic(q, voltage)
        return el + self.elastic(q), 0.5 + el / self.g


#: Offsets (dx, dy) of the committee spread's neighbourhood: the site and its 8 nearest sites of the same
#: sublattice. The members' std at one site has only M − 1 degrees of freedom (a noisy estimate of the
#: error scale); the error scale varies smoothly within a sublattice but not between the two
#: (docs/ml_model.md, "Committee spread"), so the variance is averaged over these sites.
SPREAD_OFFSETS = ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1), (-2, 0), (2, 0), (0, -2), (0, 2))


#: The 5×5 stencil of :data:`SPREAD_OFFSETS` (rows dx = −2 … 2, columns dy = −2 … 2) and its row sums.
_STENCIL = [[1.0 if (dx, dy) in SPREAD_OFFSETS else 0.0 for dy in range(-2, 3)] for dx in range(-2, 3)]
_STENCIL_ROWS = [sum(row) for row in _STENCIL]


def local_spread(std: torch.Tensor) -> torch.Tensor:
    """Committee spread (B, lx, ly) from the members' per-site std (B, lx, ly): sqrt of the mean of std² over
    :data:`SPREAD_OFFSETS` (x: open, offsets outside the device are left out of the mean; y periodic).

    A handful of graph nodes (ONNX Runtime's per-node cost dominates at 30×28): the variance extended
    periodically by two rows on either side in y (one modular gather: any ly), zero-padded by two columns
    in x, one 5×5 convolution with the fixed 0/1 stencil; the number of stencil sites inside the device,
    which depends on x only, by a 1-D convolution of the row sums. Each lattice is its own image of the
    convolution: every lattice of a batch gets the floats it gets alone."""
    var = std * std
    ly = var.shape[-1]
    rows = torch.remainder(torch.arange(-2, ly + 2, device=var.device), ly)
    ext = nn.functional.pad(var[:, :, rows], (0, 0, 2, 2)).unsqueeze(1)  # (B, 1, lx + 4, ly + 4)
    kernel = torch.tensor(_STENCIL, dtype=var.dtype, device=var.device)[None, None]
    total = nn.functional.conv2d(ext, kernel)[:, 0]  # (B, lx, ly)
    inside = nn.functional.pad(torch.ones_like(var[:1, :, 0]), (2, 2)).unsqueeze(1)  # (1, 1, lx + 4)
    row_sums = torch.tensor(_STENCIL_ROWS, dtype=var.dtype, device=var.device)[None, None]
    count = nn.functional.conv1d(inside, row_sums)[0, 0]  # (lx,)
    return torch.sqrt(total / count[:, None])


class EnsembleForceModel(nn.Module):
    """Mean of the electronic forces of several :class:`ForceModel` (same physics) + elastic term; the
    committee spread is :func:`local_spread` of the per-site std (ddof 0) of the members' forces."""

    def __init__(self, members: list[ForceModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    def member_electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """Electronic force of every member, (M, B, lx, ly)."""
        return torch.stack([m.electronic(q, voltage) for m in self.members])

    def electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        return self.member_electronic(q, voltage).mean(0)

    def spread(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """Committee spread (:func:`local_spread` of the members' std), force units, (B, lx, ly)."""
        return local_spread(self.member_electronic(q, voltage).std(0, unbiased=False))

    def forward(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> Pair:
        first = self.members[0]
        el = self.electronic(q, voltage)
        return el + first.elastic(q), 0.5 + el / first.g


def neighbour_sum(q: torch.Tensor) -> torch.Tensor:
    """Σ_{j nn of i} Q_j for (B, lx, ly), matching :func:`neqforce.physics.neighbour_sum`."""
    p = nn.functional.pad(q, (0, 0, 1, 1))
    lx, ly = q.shape[-2], q.shape[-1]
    sx = p[:, :lx] + p[:, 2:]
    y = torch.arange(ly, device=q.device)
    up, down = torch.remainder(y + 1, ly), torch.remainder(y - 1, ly)
    has_bonds = (up != y).to(q.dtype)  # 0 for a chain (ly = 1), 1 otherwise
    return sx + (q[:, :, up] + q[:, :, down]) * has_bonds


def config_from_dict(d: dict):
    """The architecture recorded in a checkpoint or in ``neqforce.architecture``: a :class:`ModelConfig`
    (descriptor + MLP) or, for ``arch = 'conv'``, a :class:`~.conv.ConvConfig`."""
    if d.get("arch") == "conv":
        from .conv import ConvConfig

        return ConvConfig.from_dict(d)
    return ModelConfig.from_dict(d)


def build_model(config, params_physical: dict) -> ForceModel:
    """An untrained model for the physical parameters (dict of SPEC names: g, k, kappa, …); a
    :class:`~.conv.ConvConfig` gives a :class:`~.conv.ConvForceModel` (the same interface)."""
    if getattr(config, "arch", "") == "conv":
        from .conv import build_conv_model

        return build_conv_model(config, params_physical)
    q0 = 2.3855
    if config.global_features:
        from neqforce.physics import HolsteinParams, bulk_cdw_amplitude

        q0 = bulk_cdw_amplitude(HolsteinParams(**params_physical))
    return ForceModel(config, g=params_physical["g"], k=params_physical["k"], kappa=params_physical["kappa"],
                      voltage=params_physical.get("voltage", 3.0), q0=q0)
