"""neqforce: surrogate force server for nonequilibrium lattice dynamics.

Subpackages: :mod:`neqforce.physics` (exact NEGF, Brownian dynamics), :mod:`neqforce.training`
(datasets, descriptors, MLP, ONNX export), :mod:`neqforce.server` (gRPC service),
:mod:`neqforce.client` (client library, simulation loop, CLI helpers).
"""

__version__ = "0.9.1"
