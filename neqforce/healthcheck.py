"""``neqforce health``: query the standard gRPC health service (grpc.health.v1) of a server.

Used by the container's HEALTHCHECK (no extra binary needed): exit code 0 when the server reports
SERVING, 1 otherwise (NOT_SERVING, unreachable, or timed out).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_health(address: str, service: str = "", timeout: float = 3.0, tls_ca: Path | None = None) -> str:
    """Status name ("SERVING", "NOT_SERVING", …) of ``service`` ("" = the whole server) at ``address``."""
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def health(
    address: str = typer.Option("127.0.0.1:50051", "--server", "--address",
                                help="Server address HOST:PORT (--address: the old name, still accepted)."),
    service: str = typer.Option("", help="Service name ('' = overall server health)."),
    timeout: float = typer.Option(3.0, min=0.1, help="Deadline in seconds."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
) -> None:
    """Check a server's gRPC health; exit 0 if SERVING, 1 otherwise."""
    try:
        status = check_health(address, service, timeout, tls_ca)
    except grpc.RpcError as exc:
        typer.echo(f"error: {address}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(status)
    raise typer.Exit(0 if status == "SERVING" else 1)


def register(app: typer.Typer) -> None:
    app.command("health")(health)
