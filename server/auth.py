"""Bearer-token authentication (a server interceptor) and TLS credentials."""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc

from .logs import log_event
from .metrics import Metrics
from .text import clip

log = logging.getLogger("neqforce.server.auth")

#: Services callable without a token: liveness probes and schema discovery reveal nothing private.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(method: str, reason: str) -> Callable:
    def abort(_request: object, context: grpc.ServicerContext) -> None:
        log_event(log, logging.WARNING, "unauthenticated", method=method, reason=reason,
                  peer=clip(context.peer()))
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      f"{reason}: send metadata 'authorization: Bearer <token>'")
    return abort


class TokenInterceptor(grpc.ServerInterceptor):
    """Require metadata ``authorization: Bearer <token>`` on every call except :data:`PUBLIC_PREFIXES`.

    The comparison is constant-time. A refused call never reaches the service.
    """

    def __init__(self, token: str, metrics: Metrics) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method.startswith(PUBLIC_PREFIXES):
            return continuation(handler_call_details)
        supplied = next((value for key, value in handler_call_details.invocation_metadata or ()
                         if key == "authorization"), None)
        if supplied is not None and hmac.compare_digest(str(supplied).encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        reason = "missing authorization metadata" if supplied is None else "invalid bearer token"
        short = method.rsplit("/", 1)[-1]
        self._metrics.observe(short, "none", "UNAUTHENTICATED", 0.0)
        deny = _deny(clip(method), reason)  # logs with the peer address, known once the call runs
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def check_tls_files(cert: str | Path, key: str | Path) -> None:
    """ValueError (one line) unless ``cert`` is a PEM certificate chain and ``key`` its unencrypted PEM
    private key: gRPC itself would only say "Failed to bind" on a key that does not match."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS key {key} does not match the certificate {cert} (its public key "
                             "differs): give the key the certificate was made for") from None
        raise ValueError(f"cannot use TLS certificate {cert} with key {key}: {exc.reason or exc} "
                         "(both must be PEM, the key unencrypted)") from None
    except ValueError as exc:
        raise ValueError(f"cannot use TLS key {key}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read TLS files {cert}, {key}: {exc.strerror or exc}") from None


def server_credentials(cert: str | Path, key: str | Path) -> grpc.ServerCredentials:
    """TLS credentials from PEM certificate chain and private key files."""
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
