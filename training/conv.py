"""Device-wide convolutional force model: raw lattice Q and voltage V → electronic force, O(N).

    q (B, lx, ly), V (B,) ──[Q, inside-the-device, V − 3] ──5×5 conv──▶ C channels
        ──residual blocks: SiLU, 3×3 conv dilated (d, 1) along x, SiLU, 1×1 conv──▶ ──1×1 conv──▶ g (n − ½)
    force = electronic + (−k Q − κ Σ_nn Q)   (exact elastic part, SPEC §2),  density = ½ + electronic / g

Why (docs/ml_model.md, "Probe for the model after 0.7"): the descriptor models see a disk of radius 8 and
column means beyond it, and underfit the high-voltage forces of their own training frames; the force in
the current-carrying CDW ahead of a wall depends on site-level configuration across the device. Dilations
1, 2, 4, 8, 16 (twice) give every site a reach of ±64 columns (±12 rows), each site at O(1) cost.

Symmetries, exact by construction: translation in y (circular convolutions in y, any ly, by a modular
gather); the y-mirror y → −y (mod ly) by averaging the network over the mirrored lattice; the
electrodes by zero padding in x plus a channel that is 1 inside the device (so a site knows which of its
neighbours are missing; the left and right electrodes differ through V). Every lattice of a batch is its
own image: the answer does not depend on the batch. Only training code imports this module (torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

#: The voltage channel carries V − V_MID (V ∈ [2, 4] → [−1, 1]).
V_MID = 3.0
DESCRIPTOR_VERSION = 1


@dataclass(frozen=True)
class ConvConfig:
    """Architecture of the device-wide convolutional model (``arch = 'conv'`` in checkpoints)."""

    channels: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)
    activation: str = "silu"
    arch: str = "conv"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConvConfig:
        return cls(**{**d, "dilations": tuple(d["dilations"])})

    @property
    def takes_voltage(self) -> bool:
        return True

    @property
    def global_features(self) -> str:  # the voltage is the model's one global input
        return "voltage"

    @property
    def reach(self) -> int:
        """Columns (either side) that can influence a site's force: 2 (input) + Σ dilations."""
        return 2 + sum(self.dilations)

    @property
    def descriptor_name(self) -> str:
        return f"conv-c{self.channels}-reach{self.reach}/{DESCRIPTOR_VERSION}"

    def macs_per_site(self) -> int:
        """Multiply-adds per site of one network pass (input conv, blocks, output), times 2 for the mirror."""
        c = self.channels
        one = 25 * 3 * c + len(self.dilations) * (9 * c * c + c * c) + c
        return 2 * one

    def graph_macs_per_site(self) -> int:
        return self.macs_per_site()


def _rows(ly: int, pad: int, device: torch.device) -> torch.Tensor:
    """Row indices of a lattice extended periodically by ``pad`` rows on either side (any ly ≥ 1)."""
    return torch.remainder(torch.arange(-pad, ly + pad, device=device), ly)


class _Block(nn.Module):
    def __init__(self, channels: int, dilation: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.d = dilation
        self.conv1 = nn.Conv2d(channels, channels, 3, dilation=(dilation, 1))
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.act = act()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act(h)
        z = z[..., _rows(h.shape[-1], 1, h.device)]  # circular in y
        z = nn.functional.pad(z, (0, 0, self.d, self.d))  # zeros beyond the electrodes
        return h + self.conv2(self.act(self.conv1(z)))


class ConvNet(nn.Module):
    """The network: (q (B, lx, ly), v (B,) already shifted by V_MID) → normalized output (B, lx, ly)."""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        from .model import ACTIVATIONS

        act = ACTIVATIONS[config.activation]
        self.inp = nn.Conv2d(3, config.channels, 5)
        self.blocks = nn.ModuleList(_Block(config.channels, d, act) for d in config.dilations)
        self.out = nn.Conv2d(config.channels, 1, 1)
        self.act = act()

    def one(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, lx, ly = q.shape
        x = torch.stack([q, torch.ones_like(q), v.reshape(b, 1, 1).expand(b, lx, ly)], 1)
        x = nn.functional.pad(x[..., _rows(ly, 2, q.device)], (0, 0, 2, 2))
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.act(h))[:, 0]

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mirror = torch.remainder(-torch.arange(q.shape[-1], device=q.device), q.shape[-1])  # y → −y mod ly
        return 0.5 * (self.one(q, v) + self.one(q[..., mirror], v)[..., mirror])


class ConvForceModel(nn.Module):
    """Lattice (and voltage) → (force, density), the interface of :class:`~.model.ForceModel`.

    Buffers: ``y_mean``, ``y_std`` (electronic force standardization, set by training), ``g``, ``k``,
    ``kappa`` and ``v_default`` (the voltage used when none is given)."""

    def __init__(self, config: ConvConfig, g: float, k: float, kappa: float, voltage: float = 3.0) -> None:
        super().__init__()
        self.config = config
        self.net = ConvNet(config)
        self.register_buffer("v_default", torch.tensor(float(voltage)), persistent=False)
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.register_buffer("g", torch.tensor(float(g)))
        self.register_buffer("k", torch.tensor(float(k)))
        self.register_buffer("kappa", torch.tensor(float(kappa)))

    def voltages(self, q: torch.Tensor, voltage: torch.Tensor | None) -> torch.Tensor:
        if voltage is None:
            return self.v_default.to(q.dtype).expand(q.shape[0])
        return torch.as_tensor(voltage, dtype=q.dtype, device=q.device).reshape(-1).expand(q.shape[0])

    def head(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized network output (what training fits to the standardized electronic force)."""
        return self.net(q, self.voltages(q, voltage) - V_MID)

    def electronic(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """Learned electronic force g (n_i − ½), (B, lx, ly)."""
        return self.head(q, voltage) * self.y_std + self.y_mean

    def elastic(self, q: torch.Tensor) -> torch.Tensor:
        from .model import neighbour_sum

        return -self.k * q - self.kappa * neighbour_sum(q)

    def forward(self, q: torch.Tensor,
                voltage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        el = self.electronic(q, voltage)
        return el + self.elastic(q), 0.5 + el / self.g


class ConvGraph(nn.Module):
    """What is exported: the members' mean (+ the committee spread ``force_std`` for 2+ members)."""

    def __init__(self, members: list[ConvForceModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.takes_voltage = True
        self.committee = len(members) > 1

    def forward(self, q: torch.Tensor, voltage: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .model import local_spread

        each = torch.stack([m.electronic(q, voltage) for m in self.members])
        el = each.mean(0)
        first = self.members[0]
        out = (el + first.elastic(q), 0.5 + el / first.g)
        if self.committee:
            out = out + (local_spread(each.std(0, unbiased=False)),)
        return out


class FusedConvGraph(nn.Module):
    """:class:`ConvGraph` with the members fused: every layer of the M members is one grouped convolution
    (M·C channels, ``groups = M``), and the lattice and its y-mirror go through it as one batch of 2B.
    The same function as :class:`ConvGraph` up to float32 rounding, in M times fewer graph nodes (ONNX
    Runtime's per-node cost dominates on small lattices). All members must share one architecture."""

    def __init__(self, members: list[ConvForceModel]) -> None:
        super().__init__()
        cfg = members[0].config
        if any(m.config != cfg for m in members):
            raise ValueError("fused export needs members of one architecture")
        n = len(members)
        self.takes_voltage, self.committee, self.n = True, n > 1, n
        self.dilations = list(cfg.dilations)
        act = type(members[0].net.act)
        self.act = act()

        def fuse(convs: list[nn.Conv2d], groups: int, dilation=(1, 1)) -> nn.Conv2d:
            w = torch.cat([cv.weight for cv in convs])
            out = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), groups=groups,
                            dilation=dilation)
            with torch.no_grad():
                out.weight.copy_(w)
                out.bias.copy_(torch.cat([cv.bias for cv in convs]))
            return out

        nets = [m.net for m in members]
        self.inp = fuse([t.inp for t in nets], 1)
        self.conv1 = nn.ModuleList(fuse([t.blocks[i].conv1 for t in nets], n, (d, 1))
                                   for i, d in enumerate(self.dilations))
        self.conv2 = nn.ModuleList(fuse([t.blocks[i].conv2 for t in nets], n)
                                   for i in range(len(self.dilations)))
        self.out = fuse([t.out for t in nets], n)
        self.register_buffer("y_std", torch.stack([m.y_std for m in members]).reshape(1, n, 1, 1))
        self.register_buffer("y_mean", torch.stack([m.y_mean for m in members]).reshape(1, n, 1, 1))
        first = members[0]
        self.register_buffer("g", first.g.clone())
        self.register_buffer("k", first.k.clone())
        self.register_buffer("kappa", first.kappa.clone())

    def forward(self, q: torch.Tensor, voltage: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .model import local_spread, neighbour_sum

        b, lx, ly = q.shape
        mirror = torch.remainder(-torch.arange(ly, device=q.device), ly)
        qq = torch.cat([q, q[..., mirror]])  # (2B, lx, ly)
        v = torch.as_tensor(voltage, dtype=q.dtype).reshape(-1).expand(b) - V_MID
        vv = torch.cat([v, v]).reshape(2 * b, 1, 1).expand(2 * b, lx, ly)
        x = torch.stack([qq, torch.ones_like(qq), vv], 1)
        h = self.inp(nn.functional.pad(x[..., _rows(ly, 2, q.device)], (0, 0, 2, 2)))
        for d, c1, c2 in zip(self.dilations, self.conv1, self.conv2, strict=True):
            z = nn.functional.pad(self.act(h)[..., _rows(ly, 1, q.device)], (0, 0, d, d))
            h = h + c2(self.act(c1(z)))
        o = self.out(self.act(h))  # (2B, M, lx, ly)
        o = 0.5 * (o[:b] + o[b:][..., mirror])
        each = o * self.y_std + self.y_mean  # (B, M, lx, ly) electronic force per member
        el = each.mean(1)
        out = (el - self.k * q - self.kappa * neighbour_sum(q), 0.5 + el / self.g)
        if self.committee:
            out = out + (local_spread(each.std(1, unbiased=False)),)
        return out


def build_conv_model(config: ConvConfig, params_physical: dict) -> ConvForceModel:
    """An untrained model for the physical parameters (dict of SPEC names)."""
    p = params_physical
    return ConvForceModel(config, g=p["g"], k=p["k"], kappa=p["kappa"], voltage=p.get("voltage", 3.0))
