"""Physics core: the driven Holstein lattice, exact NEGF forces, Brownian dynamics, domain walls.

Public API (SPEC §7)::

    HolsteinParams, electron_density, forces, cdw_ground_state, domain_wall_position
"""

from .domain_wall import (
    bulk_cdw_amplitude,
    domain_wall_position,
    local_order,
    metallic_columns,
    nucleation_time,
    wall_speed,
)
from .dynamics import BDState, ForceFn, brownian_dynamics, step_noise
from .forces import elastic_energy, elastic_force, electronic_force, forces, negf_forces
from .ground_state import cdw_ground_state
from .lattice import broadening, check_configuration, hamiltonian, neighbour_sum, reservoirs, staggered_sign
from .negf import NEGFInfo, electron_density
from .negf_reference import electron_density_riemann
from .params import DEFAULT_V, PHYSICAL_FIELDS, HolsteinParams

__all__ = [
    "DEFAULT_V", "PHYSICAL_FIELDS", "BDState", "ForceFn", "HolsteinParams", "NEGFInfo",
    "broadening", "brownian_dynamics", "bulk_cdw_amplitude", "cdw_ground_state", "check_configuration",
    "domain_wall_position", "elastic_energy", "elastic_force", "electron_density",
    "electron_density_riemann", "electronic_force", "forces", "hamiltonian", "local_order",
    "metallic_columns", "negf_forces", "neighbour_sum", "nucleation_time", "reservoirs",
    "staggered_sign", "step_noise", "wall_speed",
]
