"""Request errors that map to gRPC status codes (the only way the service reports a failed request)."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses or cannot finish; ``code`` is the gRPC status the client sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    """INVALID_ARGUMENT: the request is malformed (tensor, parameters, backend)."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def exhausted(message: str) -> RequestError:
    """RESOURCE_EXHAUSTED: over a size limit, or the queue is full."""
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def precondition(message: str) -> RequestError:
    """FAILED_PRECONDITION: the server state cannot serve this request (e.g. no covering model)."""
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, message)
