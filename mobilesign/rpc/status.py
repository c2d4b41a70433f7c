"""Errors on the wire: gRPC status codes with a stable reason (``google.rpc.ErrorInfo``).

Domain code raises a subclass of :class:`mobilesign.errors.Error`; the server interceptor turns it
into a status through :data:`CODES`, the one table from kinds to gRPC codes, with the reason in
the details. Clients read the reason back with :func:`reason_of`, and a service relaying a
callee's refusal turns its code back into a kind with :func:`kind_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from mobilesign.errors import Error, Kind

E = TypeVar("E", bound=Error)

DOMAIN = "mobilesign.v1"
_DETAILS_KEY = "grpc-status-details-bin"

#: The one mapping from an error's kind to its gRPC status code.
CODES: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Kind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Kind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.ABORTED: grpc.StatusCode.ABORTED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}
_KINDS = {code: kind for kind, code in CODES.items()}


def code_of(kind: Kind) -> grpc.StatusCode:
    """The gRPC status code an error of ``kind`` is reported with."""
    return CODES[kind]


def kind_of(code: grpc.StatusCode) -> Kind:
    """The kind of a callee's refusal (codes outside the table count as INTERNAL)."""
    return _KINDS.get(code, Kind.INTERNAL)


def status_metadata(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> tuple[tuple[str, bytes]]:
    """Trailing metadata carrying a ``google.rpc.Status`` with an ``ErrorInfo`` detail."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    )
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return ((_DETAILS_KEY, status.SerializeToString()),)


def reason_of(error: grpc.RpcError) -> str | None:
    """The ``ErrorInfo.reason`` of a failed call, or None when the status carries none."""
    info = error_info(error)
    return str(info.reason) if info is not None else None


def reason_in(trailing_metadata: Any) -> str | None:
    """The ``ErrorInfo.reason`` in a call's trailing metadata, or None when there is none."""
    info = error_info_in(trailing_metadata)
    return str(info.reason) if info is not None else None


def error_info(error: grpc.RpcError) -> Any:
    """The ``google.rpc.ErrorInfo`` of a failed call (reason and metadata), or None."""
    trailing = getattr(error, "trailing_metadata", None)
    return error_info_in(trailing() if callable(trailing) else None)


def error_info_in(trailing_metadata: Any) -> Any:
    """The ``google.rpc.ErrorInfo`` in a call's trailing metadata, or None."""
    for item in trailing_metadata or ():
        key, value = item[0], item[1]
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


def relayed(
    error: grpc.aio.AioRpcError, factory: type[E], callee: str, unreachable_reason: str
) -> E:
    """A callee's failure as the caller's own error: unreachable (UNAVAILABLE or a deadline)
    becomes UNAVAILABLE ``unreachable_reason``; a refusal keeps its kind, reason and message,
    so that the phone or administrator sees why the callee said no. A failure without a reason
    (the callee's transport, not its code) keeps its kind under ``unreachable_reason``."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return factory(Kind.UNAVAILABLE, unreachable_reason, f"the {callee} cannot be reached")
    reason = reason_of(error)
    if reason is None:
        return factory(kind_of(code), unreachable_reason, f"the {callee} failed ({code.name})")
    return factory(kind_of(code), reason, error.details() or "")
