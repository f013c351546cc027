"""The force server: ``neqforce.v1.ForceService`` over gRPC with ONNX Runtime and exact NEGF backends.

Entry points: :func:`neqforce.server.app.start_server` (library), ``neqforce serve`` (CLI,
:mod:`neqforce.server.cli`). Modules: ``config`` (ServerConfig), ``service`` (the servicer), ``routing``
(AUTO | ONNX | NEGF), ``tensors`` (raw-bytes tensors, |q| range), ``admission`` (slots and queue, one per
backend), ``auth`` (token, TLS), ``metrics`` (Prometheus), ``logs`` (JSON lines), ``text`` (bounded echo of
client strings), ``threads`` (daemon handler pool), ``backends/`` (onnx, negf, integrity of model files).
"""

import logging

# Library default: silent unless the application (or ``neqforce serve``) configures logging.
logging.getLogger("neqforce.server").addHandler(logging.NullHandler())
