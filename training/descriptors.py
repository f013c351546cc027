"""C_s symmetry-adapted lattice descriptors: NumPy reference implementation (SPEC §6).

This module is the slow-but-obvious reference. The torch descriptor inside the model and the ONNX
graph (:mod:`neqforce.training.model`) are tested against it.

Neighbourhood of site i = (x, y): offsets (dx, dy) with dx² + dy² ≤ r_c², r_c = 6 → 113 offsets.
y wraps periodically (any ly ≥ 1: offsets wrap as many times as needed); in x, offsets beyond the
electrodes read Q = 0 (the undistorted value; the electrodes are metals).

``paper`` descriptor (113 features, the paper's eq. 11–12), in this order:

* 13 offsets on the mirror line (dy = 0, dx = -6 … 6): Q_j;
* 50 mirror pairs j = (dx, dy), ĵ = (dx, -dy), dy > 0 (sorted by dx, then dy): f_A' = Q_j + Q_ĵ;
* the same 50 pairs: G_A'' = f_A'' · f_ref with f_A'' = Q_j - Q_ĵ, f_ref = Q_t - Q_b, Q_t (Q_b) the
  mean of Q over the 50 offsets with dy > 0 (dy < 0).

``device`` descriptor (whole-device extension, see docs/ml_model.md):

* invariant block (125): the 113 paper features + electrode encoding: one-hot of the distance
  d_L = x to the left electrode column for d_L = 0 … r_c-1 (6) and of d_R = lx-1-x to the right one
  (6). Sites with d ≥ r_c have all-zero electrode features (bulk: their disk lies inside the lattice);
* antisymmetric block (50): the raw f_A'' = Q_j - Q_ĵ. It changes sign under the mirror; the model
  makes it invariant by group-averaging its first layer over C_s (h = φ(W_s s + W_a a) +
  φ(W_s s - W_a a)), which keeps the relative A'' phases without a reference mode that can vanish.

Every feature of the invariant block is unchanged by the mirror (dx, dy) → (dx, -dy) about site i.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Cutoff radius of the neighbourhood (lattice constants).
R_CUT = 6
#: Descriptor names and versions (stored in model metadata as ``neqforce.descriptor``).
PAPER_DESCRIPTOR = "paper-cs113/1"
DEVICE_DESCRIPTOR = "device-cs113+elec12+a50/1"
#: Descriptor kinds and their names: the paper's, the whole-device one, and an ablation of the latter
#: without the group-averaged A'' block.
DESCRIPTORS = {"paper": PAPER_DESCRIPTOR, "device": DEVICE_DESCRIPTOR, "paper+elec": "paper-cs113+elec12/1"}


@dataclass(frozen=True)
class Offsets:
    """The neighbourhood offsets, split by mirror class (arrays of (dx, dy), int64)."""

    line: np.ndarray  # (13, 2): dy = 0, sorted by dx
    top: np.ndarray  # (50, 2): dy > 0, sorted by (dx, dy)
    bottom: np.ndarray  # (50, 2): the mirror images (dx, -dy) of ``top``, same order

    @property
    def n_paper(self) -> int:
        return len(self.line) + 2 * len(self.top)


@lru_cache(maxsize=8)
def offsets(r_cut: int = R_CUT) -> Offsets:
    """Offsets (dx, dy) with dx² + dy² ≤ r_cut², grouped as on/above/below the mirror line."""
    r = np.arange(-r_cut, r_cut + 1)
    dx, dy = np.meshgrid(r, r, indexing="ij")
    inside = dx**2 + dy**2 <= r_cut**2
    dx, dy = dx[inside], dy[inside]
    line = np.stack([dx[dy == 0], dy[dy == 0]], axis=1)
    top = np.stack([dx[dy > 0], dy[dy > 0]], axis=1)  # meshgrid order: sorted by dx, then dy
    bottom = top * np.array([1, -1])
    return Offsets(line=line, top=top, bottom=bottom)


def descriptor_name(kind: str, r_cut: int = R_CUT) -> str:
    """Name and version stored in model metadata, e.g. ``paper-cs113+elec12/1`` (r_c = 6) or
    ``paper-cs197+elec16/1`` (r_c = 8): offsets in the disk, electrode one-hots, A'' block size."""
    if kind not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {kind!r} (known: {', '.join(DESCRIPTORS)})")
    off = offsets(r_cut)
    name = f"{'paper' if kind != 'device' else 'device'}-cs{off.n_paper}"
    if kind != "paper":
        name += f"+elec{2 * r_cut}"
    if kind == "device":
        name += f"+a{len(off.top)}"
    return name + "/1"


def n_features(kind: str = "paper", r_cut: int = R_CUT) -> tuple[int, int]:
    """(invariant, antisymmetric) feature counts of a descriptor kind ('paper' or 'device')."""
    off = offsets(r_cut)
    if kind == "paper":
        return off.n_paper, 0
    if kind == "device":
        return off.n_paper + 2 * r_cut, len(off.top)
    if kind == "paper+elec":
        return off.n_paper + 2 * r_cut, 0
    raise ValueError(f"unknown descriptor {kind!r} (known: {', '.join(DESCRIPTORS)})")


def neighbour_values(q: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Q at site (x + dx, y + dy) for every site and offset: (..., lx, ly, n_off).

    y periodic (mod ly), x outside 0 … lx-1 reads 0. ``q`` has shape (..., lx, ly).
    """
    q = np.asarray(q)
    lx, ly = q.shape[-2:]
    x = np.arange(lx)[:, None, None] + off[None, None, :, 0]  # (lx, 1, n)
    y = (np.arange(ly)[None, :, None] + off[None, None, :, 1]) % ly  # (1, ly, n)
    inside = (x >= 0) & (x < lx)
    vals = q[..., np.clip(x, 0, lx - 1), y]  # (..., lx, ly, n)
    return np.where(inside, vals, 0.0)


def paper_features(q: np.ndarray, r_cut: int = R_CUT) -> np.ndarray:
    """The paper's C_s features of every site, (..., lx, ly, 113) for r_cut = 6 (module docstring)."""
    off = offsets(r_cut)
    line = neighbour_values(q, off.line)
    top = neighbour_values(q, off.top)
    bot = neighbour_values(q, off.bottom)
    f_ref = top.mean(axis=-1, keepdims=True) - bot.mean(axis=-1, keepdims=True)
    return np.concatenate([line, top + bot, (top - bot) * f_ref], axis=-1)


def antisymmetric_features(q: np.ndarray, r_cut: int = R_CUT) -> np.ndarray:
    """f_A'' = Q_j - Q_ĵ of the 50 mirror pairs, (..., lx, ly, 50): odd under the mirror."""
    off = offsets(r_cut)
    return neighbour_values(q, off.top) - neighbour_values(q, off.bottom)


def electrode_features(lx: int, ly: int, r_cut: int = R_CUT) -> np.ndarray:
    """One-hot distances to the left (x) and right (lx-1-x) electrode columns, (lx, ly, 2 r_cut)."""
    x = np.arange(lx)
    d = np.arange(r_cut)
    left = (x[:, None] == d[None, :]).astype(np.float64)
    right = ((lx - 1 - x)[:, None] == d[None, :]).astype(np.float64)
    return np.broadcast_to(np.concatenate([left, right], axis=1)[:, None, :], (lx, ly, 2 * r_cut)).copy()


def device_features(q: np.ndarray, r_cut: int = R_CUT) -> tuple[np.ndarray, np.ndarray]:
    """Whole-device descriptor: (invariant (..., lx, ly, 125), antisymmetric (..., lx, ly, 50))."""
    q = np.asarray(q)
    lx, ly = q.shape[-2:]
    elec = np.broadcast_to(electrode_features(lx, ly, r_cut), (*q.shape, 2 * r_cut))
    inv = np.concatenate([paper_features(q, r_cut), elec], axis=-1)
    return inv, antisymmetric_features(q, r_cut)


def features(q: np.ndarray, kind: str = "paper", r_cut: int = R_CUT) -> tuple[np.ndarray, np.ndarray]:
    """(invariant, antisymmetric) features of a descriptor kind; the paper's has an empty second block."""
    if kind == "paper":
        inv = paper_features(q, r_cut)
        return inv, np.zeros((*inv.shape[:-1], 0))
    if kind == "device":
        return device_features(q, r_cut)
    if kind == "paper+elec":
        inv = device_features(q, r_cut)[0]
        return inv, np.zeros((*inv.shape[:-1], 0))
    raise ValueError(f"unknown descriptor {kind!r} (known: {', '.join(DESCRIPTORS)})")


def mirror_about(q: np.ndarray, y0: int) -> np.ndarray:
    """The lattice mirrored in y about row y0: q'[x, y] = q[x, 2 y0 - y (mod ly)]."""
    ly = q.shape[-1]
    return q[..., (2 * y0 - np.arange(ly)) % ly]
