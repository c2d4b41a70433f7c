"""Errors as gRPC status codes with a stable machine-readable reason (``google.rpc.ErrorInfo``).

Servicers raise :class:`ServiceError`; the interceptor turns it into a status whose details carry
the reason. Clients read the reason back with :func:`reason_of`. Messages are for people and never
contain secrets; reasons are stable UPPER_SNAKE identifiers that callers may branch on.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "mobilesign.v1"
_DETAILS_KEY = "grpc-status-details-bin"


class ServiceError(Exception):
    """A refusal to be reported to the caller as ``code`` with the stable ``reason``."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


def status_metadata(code: grpc.StatusCode, reason: str, message: str) -> tuple[tuple[str, bytes]]:
    """Trailing metadata carrying a ``google.rpc.Status`` with an ``ErrorInfo`` detail."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return ((_DETAILS_KEY, status.SerializeToString()),)


def reason_of(error: grpc.RpcError) -> str | None:
    """The ``ErrorInfo.reason`` of a failed call, or None when the status carries none."""
    trailing = getattr(error, "trailing_metadata", None)
    for item in (trailing() if callable(trailing) else None) or ():
        key, value = item[0], item[1]
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return None
