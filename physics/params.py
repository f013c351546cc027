"""Physical parameters of the driven Holstein model (SPEC §4) and their validation."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

#: Operating point: bias voltage (mu_L = -V) at which the CDW melts from the left electrode (SPEC §8).
DEFAULT_V: float = 3.0

#: Fields that describe the physics (everything except the lattice size).
PHYSICAL_FIELDS: tuple[str, ...] = (
    "t", "g", "k", "kappa", "gamma_lead", "gamma_bath", "temperature", "voltage",
)


@dataclass(frozen=True)
class HolsteinParams:
    """Parameters of the semiclassical Holstein model between two electrodes (energy unit t = 1).

    Attributes:
        lx, ly: lattice size; x (0 … lx-1) is the transport direction (open), y is periodic.
        t: nearest-neighbour hopping.
        g: electron-phonon coupling (H_ii = -g Q_i).
        k: on-site lattice stiffness.
        kappa: nearest-neighbour antiferrodistortive coupling (E_lat ∋ kappa Σ_<ij> Q_i Q_j).
        gamma_lead: broadening Γ of the sites touching an electrode (columns 0 and lx-1).
        gamma_bath: broadening Γ of all other sites (weak bulk bath at mu = 0).
        temperature: electron and Langevin temperature (k_B = 1), >= 0.
        voltage: bias V; the left electrode (x = 0) has mu_L = -V, the right one mu_R = 0.
    """

    lx: int = 30
    ly: int = 28
    t: float = 1.0
    g: float = field(default_factory=lambda: math.sqrt(0.28 * 8.0))
    k: float = 1.0
    kappa: float = 0.18
    gamma_lead: float = 1.0
    gamma_bath: float = 0.001
    temperature: float = 0.1
    voltage: float = DEFAULT_V

    def __post_init__(self) -> None:
        for name in ("lx", "ly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
            object.__setattr__(self, name, int(value))
        for name in PHYSICAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, float(value))
        for name in ("gamma_lead", "gamma_bath"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"{name} (a broadening) must be > 0, got {getattr(self, name)}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.k <= 0.0:
            raise ValueError(f"k (stiffness) must be > 0, got {self.k}")

    @property
    def n_sites(self) -> int:
        return self.lx * self.ly

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lx, self.ly)

    def replace(self, **changes: Any) -> HolsteinParams:
        """A copy with some fields changed (validated); unknown names raise ValueError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def physical(self) -> dict[str, float]:
        """The physical fields (no lattice size), e.g. for model metadata."""
        return {name: getattr(self, name) for name in PHYSICAL_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HolsteinParams:
        """Build from a mapping of SPEC names; unknown keys raise ValueError."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> HolsteinParams:
        return cls.from_dict(json.loads(text))
