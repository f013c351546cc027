"""Generated gRPC/protobuf stubs of the neqforce v1 protocol (``protos/neqforce/v1/*.proto``).

Regenerate from the repository root after editing a .proto (``tests/server/test_stubs.py`` fails when the
committed stubs are stale)::

    python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \\
        protos/neqforce/v1/*.proto

The generated code needs protobuf >= 7.35.1 and grpcio >= 1.85.1 at run time (the versions of the
grpcio-tools that generated it).

Modules: :mod:`neqforce.v1.force_service_pb2` (messages, enums), :mod:`neqforce.v1.force_service_pb2_grpc`
(``ForceServiceStub``, ``ForceServiceServicer``, ``add_ForceServiceServicer_to_server``).
"""

#: Fully qualified name of the force service (health-check service name, reflection).
SERVICE_NAME = "neqforce.v1.ForceService"
