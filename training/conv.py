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

import math
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
    #: How the y-mirror is exact: "average" (the network on the lattice and on its mirror image, averaged:
    #: two passes) or "equivariant" (channels in mirror pairs, kernels tied so that every layer commutes
    #: with the mirror: one pass; :class:`MirrorConvNet`).
    mirror: str = "average"
    #: A second output, the per-site spread of a teacher committee predicted by this one network
    #: (distillation, ``neqforce train --teacher``): a small head on the trunk's last features, trained on
    #: them detached, so it cannot change the force. Exported as ``force_std`` like a committee's spread.
    spread_head: bool = False

    def __post_init__(self) -> None:
        if self.mirror not in ("average", "equivariant"):
            raise ValueError(f"mirror must be 'average' or 'equivariant', got {self.mirror!r}")
        if self.spread_head and self.mirror != "average":
            raise ValueError("a spread head is implemented for the mirror-averaged network only")
        if self.mirror == "equivariant" and self.channels % 2:
            raise ValueError(f"an equivariant network needs an even channel count, got {self.channels}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        if self.mirror == "average":  # checkpoints and cards of 0.8 have no such key
            del d["mirror"]
        if not self.spread_head:  # nor this one
            del d["spread_head"]
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
        eq = "-eq" if self.mirror == "equivariant" else ""
        return f"conv{eq}-c{self.channels}-reach{self.reach}/{DESCRIPTOR_VERSION}"

    def macs_per_site(self) -> int:
        """Multiply-adds per site of one network pass (input conv, blocks, output), times 2 for the mirror
        average (one pass for an equivariant network)."""
        c = self.channels
        one = 25 * 3 * c + len(self.dilations) * (9 * c * c + c * c) + c
        one += c * c + c if self.spread_head else 0
        return one if self.mirror == "equivariant" else 2 * one

    def graph_macs_per_site(self) -> int:
        return self.macs_per_site()


def _channels(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The network's input (B, 3, lx, ly): Q, 1 inside the device (0 in the electrodes' zero padding) and
    V − V_MID (``v``, shape (B,)) on every site."""
    b, lx, ly = q.shape
    return torch.stack([q, torch.ones_like(q), v.reshape(b, 1, 1).expand(b, lx, ly)], 1)


def _mirror(ly: int, device: torch.device) -> torch.Tensor:
    """Row indices of the y-mirror image y → −y (mod ly)."""
    return torch.remainder(-torch.arange(ly, device=device), ly)


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
        self.has_spread = config.spread_head
        if self.has_spread:
            self.spread_hidden = nn.Conv2d(config.channels, config.channels, 1)
            self.spread_out = nn.Conv2d(config.channels, 1, 1)

    def _spread(self, feat: torch.Tensor) -> torch.Tensor:
        """Spread head on the trunk's last features (detached: it learns from them, never changes them);
        positive, in the units of the normalized force."""
        z = self.spread_out(self.act(self.spread_hidden(feat.detach())))
        return nn.functional.softplus(z)[:, 0]

    def _trunk(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ly = q.shape[-1]
        x = nn.functional.pad(_channels(q, v)[..., _rows(ly, 2, q.device)], (0, 0, 2, 2))
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h)
        return self.act(h)

    def one(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(self._trunk(q, v))[:, 0]

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mirror = _mirror(q.shape[-1], q.device)
        return 0.5 * (self.one(q, v) + self.one(q[..., mirror], v)[..., mirror])

    def mirror_features(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The trunk's last features (2B, C, lx, ly) of the lattices and of their y-mirror images, stacked."""
        mirror = _mirror(q.shape[-1], q.device)
        return self._trunk(torch.cat([q, q[..., mirror]]), torch.cat([v, v]))

    def heads(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized output, predicted normalized spread) from :meth:`mirror_features`, each averaged over
        the lattice and its mirror image."""
        b, ly = feat.shape[0] // 2, feat.shape[-1]
        mirror = _mirror(ly, feat.device)
        out, spread = self.out(feat)[:, 0], self._spread(feat)
        return (0.5 * (out[:b] + out[b:][..., mirror]), 0.5 * (spread[:b] + spread[b:][..., mirror]))

    def forward_with_spread(self, q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized output, predicted normalized spread), both averaged over the y-mirror (one trunk
        pass per image, as :meth:`forward`)."""
        return self.heads(self.mirror_features(q, v))

    @property
    def strip_rows(self) -> int:
        """Reach of the network in y (rows either side): 2 (input 5×5) + 1 per block."""
        return 2 + len(self.blocks)

    def on_strip(self, x: torch.Tensor, with_spread: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One pass on input channels (B, 3, lx, ly + 2·strip_rows) already extended periodically in y
        (the export graph): every convolution zero-padded in x (the electrodes) and *valid* in y, so the
        strip loses two rows at the 5×5 input and one on either side per block and comes out with exactly
        the ly rows of :meth:`one` (and, ``with_spread``, of the spread head). The residual's skip is
        cropped by a fixed depthwise 1×3 convolution [0, 1, 0]: a Conv node, so ONNX Runtime keeps the
        chain in its blocked layout (a Slice there costs 1.3× at 1000×1000, docs/ml_model.md)."""
        conv = nn.functional.conv2d
        c = int(self.inp.weight.shape[0])
        crop = torch.zeros(c, 1, 1, 3, dtype=x.dtype, device=x.device)
        crop[:, 0, 0, 1] = 1.0
        h = conv(x, self.inp.weight, self.inp.bias, padding=(2, 0))
        for blk in self.blocks:
            z = conv(blk.act(h), blk.conv1.weight, blk.conv1.bias, padding=(blk.d, 0), dilation=(blk.d, 1))
            h = conv(h, crop, groups=c) + blk.conv2(blk.act(z))
        feat = self.act(h)
        if with_spread:
            return self.out(feat)[:, 0], self._spread(feat)
        return self.out(feat)[:, 0]


class _MirrorConv(nn.Module):
    """A convolution that commutes with the y-mirror M: y → −y (mod ly).

    Features come in mirror pairs: channels [a | b] with M (a, b)(y) = (b, a)(−y). Free weights W_s (a → a)
    and W_x (b → a); the b outputs use them flipped in y: the kernel [[W_s, W_x], [W̃_x, W̃_s]] (W̃: kernel
    reversed along y) satisfies K ∘ M = M ∘ K exactly. ``trivial_in``: the inputs are mirror-invariant
    scalars (Q, inside, V), the kernel [W; W̃]; ``trivial_out``: one invariant output, the kernel [W, W̃].
    Half the free parameters of a plain convolution with as many channels, the same multiply-adds."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: tuple[int, int] = (1, 1),
                 trivial_in: bool = False, trivial_out: bool = False) -> None:
        super().__init__()
        self.trivial_in, self.trivial_out, self.dilation = trivial_in, trivial_out, dilation
        f_out = c_out if trivial_out else c_out // 2
        f_in = c_in if trivial_in else c_in // 2
        bound = 1.0 / math.sqrt(c_in * kernel * kernel)  # torch's Conv2d default, fan-in of the full kernel
        self.w_same = nn.Parameter(torch.empty(f_out, f_in, kernel, kernel).uniform_(-bound, bound))
        cross = not (trivial_in or trivial_out)
        self.w_cross = nn.Parameter(torch.empty(f_out, f_in, kernel, kernel).uniform_(-bound, bound)) \
            if cross else None
        self.bias = nn.Parameter(torch.empty(f_out).uniform_(-bound, bound))

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full (weight, bias) of the equivalent plain convolution."""
        w, flip = self.w_same, torch.flip(self.w_same, [-1])
        if self.trivial_in:
            return torch.cat([w, flip]), torch.cat([self.bias, self.bias])
        if self.trivial_out:
            return torch.cat([w, flip], 1), self.bias
        a = torch.cat([w, self.w_cross], 1)
        b = torch.cat([torch.flip(self.w_cross, [-1]), flip], 1)
        return torch.cat([a, b]), torch.cat([self.bias, self.bias])

    def forward(self, x: torch.Tensor, padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
        w, b = self.kernel()
        return nn.functional.conv2d(x, w, b, padding=padding, dilation=self.dilation)


class MirrorConvNet(nn.Module):
    """:class:`ConvNet`'s architecture with mirror-paired channels (:class:`_MirrorConv`): exactly
    y-mirror equivariant in one pass (the average over the mirror costs a second pass). Same interface."""

    equivariant = True

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        from .model import ACTIVATIONS

        c = config.channels
        self.act = ACTIVATIONS[config.activation]()
        self.dilations = tuple(config.dilations)
        self.inp = _MirrorConv(3, c, 5, trivial_in=True)
        self.conv1 = nn.ModuleList(_MirrorConv(c, c, 3, dilation=(d, 1)) for d in self.dilations)
        self.conv2 = nn.ModuleList(_MirrorConv(c, c, 1) for _ in self.dilations)
        self.out = _MirrorConv(c, 1, 1, trivial_out=True)

    @property
    def strip_rows(self) -> int:
        return 2 + len(self.dilations)

    def kernels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of every layer as a plain convolution, in order: input, (conv1, conv2) per block,
        output."""
        layers = [self.inp] + [c for pair in zip(self.conv1, self.conv2, strict=True) for c in pair]
        return [c.kernel() for c in layers + [self.out]]

    def on_strip(self, x: torch.Tensor, kernels: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> torch.Tensor:
        """As :meth:`ConvNet.on_strip`: inputs extended periodically by ``strip_rows`` in y, zero pads.
        ``kernels``: :meth:`kernels` computed beforehand (the export stores them as plain weights)."""
        conv = nn.functional.conv2d
        ks = iter(self.kernels() if kernels is None else kernels)
        w, b = next(ks)
        h = conv(x, w, b, padding=(2, 2))
        for d in self.dilations:
            (w1, b1), (w2, b2) = next(ks), next(ks)
            h = h + conv(self.act(conv(self.act(h), w1, b1, padding=(d, 1), dilation=(d, 1))), w2, b2)
        w, b = next(ks)
        return conv(self.act(h), w, b)[:, 0]

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(q (B, lx, ly), v (B,) shifted by V_MID) → normalized output (B, lx, ly). Training path: each
        layer extended by the rows it needs (a circular gather per layer, as :class:`ConvNet`), 1.3× faster
        to train than :meth:`on_strip` at ly = 28; the same function."""
        ly = q.shape[-1]
        conv, pad = nn.functional.conv2d, nn.functional.pad
        x = _channels(q, v)
        ks = iter(self.kernels())
        w, bias = next(ks)
        h = conv(pad(x[..., _rows(ly, 2, q.device)], (0, 0, 2, 2)), w, bias)
        for d in self.dilations:
            (w1, b1), (w2, b2) = next(ks), next(ks)
            z = pad(self.act(h)[..., _rows(ly, 1, q.device)], (0, 0, d, d))
            h = h + conv(self.act(conv(z, w1, b1, dilation=(d, 1))), w2, b2)
        w, bias = next(ks)
        return conv(self.act(h), w, bias)[:, 0]


class ConvForceModel(nn.Module):
    """Lattice (and voltage) → (force, density), the interface of :class:`~.model.ForceModel`.

    Buffers: ``y_mean``, ``y_std`` (electronic force standardization, set by training), ``g``, ``k``,
    ``kappa`` and ``v_default`` (the voltage used when none is given)."""

    def __init__(self, config: ConvConfig, g: float, k: float, kappa: float, voltage: float = 3.0) -> None:
        super().__init__()
        self.config = config
        self.net = MirrorConvNet(config) if config.mirror == "equivariant" else ConvNet(config)
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

    def head_and_spread(self, q: torch.Tensor, voltage: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized output, predicted normalized per-site committee std); needs a spread head."""
        return self.net.forward_with_spread(q, self.voltages(q, voltage) - V_MID)

    @property
    def has_spread(self) -> bool:
        return bool(getattr(self.net, "has_spread", False))

    def member_std(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher committee's per-site std of the electronic force as this network predicts it
        (force units, (B, lx, ly)); only for a network with a spread head."""
        return self.head_and_spread(q, voltage)[1] * self.y_std

    def spread(self, q: torch.Tensor, voltage: torch.Tensor | None = None) -> torch.Tensor:
        """The exported ``force_std``: :func:`~.model.local_spread` of :meth:`member_std` (the committee
        spread's definition, applied to the distilled per-site std)."""
        from .model import local_spread

        return local_spread(self.member_std(q, voltage))

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
    """What is exported: the members' mean (+ the committee spread ``force_std`` for 2+ members).

    The same function as the members' ``forward`` (to float32 rounding), laid out for ONNX Runtime: the
    lattice and its y-mirror go through each member as one batch of 2B; the rows are extended periodically
    once, by the network's reach in y (:meth:`ConvNet.strip_rows`), and every convolution is then valid in y
    (the strip shrinks to the ly rows, :meth:`ConvNet.on_strip`) and zero-pads in x inside the Conv node, so
    no gather or pad sits between convolutions and ONNX Runtime keeps the whole chain in its blocked
    (NCHWc) layout: 2.4–2.7× faster than a gather per layer at 30×28 and 1000×1000 (package 0.8.1), and
    valid rows another 1.15× at 30×28 over zero-padded ones (package 0.9.1; same speed at 1000×1000).
    A mirror-equivariant member (:class:`MirrorConvNet`) takes the lattice alone, in one pass. Every
    lattice of a batch is its own image: the answer does not depend on the batch."""

    def __init__(self, members: list[ConvForceModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.takes_voltage = True
        #: one member with a spread head (a distilled committee) outputs force_std as a committee does; in a
        #: committee of 2+ the spread is the members' std and their heads are not used
        self.distilled = len(members) == 1 and members[0].has_spread
        self.committee = len(members) > 1 or self.distilled
        with torch.no_grad():  # equivariant members: their tied kernels as plain weights (graph constants)
            self.plain = [m.net.kernels() if getattr(m.net, "equivariant", False) else None for m in members]

    def forward(self, q: torch.Tensor, voltage: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .model import local_spread

        b, ly = q.shape[0], q.shape[-1]
        mirror = _mirror(ly, q.device)
        averaged = any(p is None for p in self.plain)  # some member averages over the mirror
        v = torch.as_tensor(voltage, dtype=q.dtype, device=q.device).reshape(-1).expand(b) - V_MID
        x = _channels(torch.cat([q, q[..., mirror]]), torch.cat([v, v])) if averaged else _channels(q, v)
        outs = []
        for m, plain in zip(self.members, self.plain, strict=True):
            pad = m.net.strip_rows
            if plain is not None:  # equivariant: one pass, the lattice only
                o = m.net.on_strip(x[:b][..., _rows(ly, pad, q.device)], plain)[..., pad:pad + ly]
            elif self.distilled:  # valid in y: on_strip returns the ly rows
                o, s = m.net.on_strip(x[..., _rows(ly, pad, q.device)], with_spread=True)
                o, std = 0.5 * (o[:b] + o[b:][..., mirror]), 0.5 * (s[:b] + s[b:][..., mirror]) * m.y_std
            else:
                o = m.net.on_strip(x[..., _rows(ly, pad, q.device)])
                o = 0.5 * (o[:b] + o[b:][..., mirror])
            outs.append(o * m.y_std + m.y_mean)
        each = torch.stack(outs)  # (M, B, lx, ly) electronic force per member
        el = each.mean(0)
        first = self.members[0]
        out = (el + first.elastic(q), 0.5 + el / first.g)
        if self.distilled:
            out = out + (local_spread(std),)
        elif self.committee:
            out = out + (local_spread(each.std(0, unbiased=False)),)
        return out


def build_conv_model(config: ConvConfig, params_physical: dict) -> ConvForceModel:
    """An untrained model for the physical parameters (dict of SPEC names)."""
    p = params_physical
    return ConvForceModel(config, g=p["g"], k=p["k"], kappa=p["kappa"], voltage=p.get("voltage", 3.0))
