"""The force server: ``neqforce.v1.ForceService`` over gRPC with ONNX Runtime and exact NEGF backends.

Entry points: :func:`neqforce.server.app.start_server` (library), ``neqforce serve`` (CLI,
:mod:`neqforce.server.cli`). Modules: ``config`` (ServerConfig), ``service`` (the servicer), ``routing``
(AUTO | ONNX | NEGF), ``tensors`` (raw-bytes tensors), ``admission`` (concurrency and queue), ``auth``
(token, TLS), ``metrics`` (Prometheus), ``logs`` (JSON lines), ``backends/`` (onnx, negf).
"""

import logging

# Library default: silent unless the application (or ``neqforce serve``) configures logging.
logging.getLogger("neqforce.server").addHandler(logging.NullHandler())
