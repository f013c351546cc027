"""Client side: the force-server client library (:mod:`neqforce.client.client`), simulation loop, CLI helpers.

    from neqforce.client import ForceClient, ForceResult, ForceServerError
"""

from .client import ForceClient, ForceResult, ForceServerError, ForceStream

__all__ = ["ForceClient", "ForceResult", "ForceServerError", "ForceStream"]
