"""Errors on the wire: gRPC status codes with a stable reason (``google.rpc.ErrorInfo``).

Domain code raises a subclass of :class:`mobilesign.errors.Error`; the server interceptor turns it
into a status through :data:`CODES`, the one table from kinds to gRPC codes, with the reason in
the details and, for a refusal a later try may not meet (:data:`RETRY_DELAYS`), how long to wait
first. Clients read them back with :func:`reason_of` and :func:`retry_delay_of`, and a service
relaying a callee's refusal turns its code back into a kind with :func:`kind_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
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

#: The one decision on which refusals are worth trying again, and after how many seconds
#: (``google.rpc.RetryInfo.retry_delay``, sent beside the ``ErrorInfo``); the reason None
#: covers every reason of its kind. UNAVAILABLE is a callee or token briefly away (a restart;
#: the channels reconnect within 0.3 s) and ABORTED a stream that ended or fell behind, to be
#: opened again. RESOURCE_EXHAUSTED only where it is a load limit that passes by
#: itself: calls in flight from one address, the HSM's queue, logins per key within a challenge
#: lifetime (60 s, one login freeing a place); a used-up quota (QUOTA_EXCEEDED) lasts until the
#: grant or the day changes, so it carries no delay. Anything else fails the same way again.
RETRY_DELAYS: dict[tuple[Kind, str | None], float] = {
    (Kind.UNAVAILABLE, None): 1.0,
    (Kind.ABORTED, None): 1.0,
    (Kind.EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER"): 1.0,
    (Kind.EXHAUSTED, "HSM_QUEUE_FULL"): 1.0,
    (Kind.EXHAUSTED, "TOO_MANY_CHALLENGES"): 5.0,
}


def code_of(kind: Kind) -> grpc.StatusCode:
    """The gRPC status code an error of ``kind`` is reported with."""
    return CODES[kind]


def kind_of(code: grpc.StatusCode) -> Kind:
    """The kind of a callee's refusal (codes outside the table count as INTERNAL)."""
    return _KINDS.get(code, Kind.INTERNAL)


def retry_delay(kind: Kind, reason: str) -> float | None:
    """Seconds to wait before trying again after a refusal of ``kind`` with ``reason``, or None
    when a later try would fail the same way (:data:`RETRY_DELAYS`)."""
    return RETRY_DELAYS.get((kind, reason), RETRY_DELAYS.get((kind, None)))


def wire_message(reason: str, message: str) -> str:
    """The status message sent: the reason first, so that a tool that cannot decode the
    ``ErrorInfo`` detail (``buf curl`` prints it as base64) still shows it in text."""
    return f"{reason}: {message}" if message else reason


def message_in(reason: str | None, details: str | None) -> str:
    """A status message without the reason :func:`wire_message` put in front of it."""
    text = details or ""
    if reason and (text == reason or text.startswith(f"{reason}: ")):
        return text[len(reason) + 2 :]
    return text


def message_of(error: grpc.aio.AioRpcError) -> str:
    """A failed call's message, as the callee's code wrote it (without its reason)."""
    return message_in(reason_of(error), error.details())


def status_metadata(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> tuple[tuple[str, bytes]]:
    """Trailing metadata carrying a ``google.rpc.Status`` with an ``ErrorInfo`` detail, and a
    ``RetryInfo`` detail when the refusal is worth trying again (:func:`retry_delay`)."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    )
    details = [info]
    delay = retry_delay(kind_of(code), reason)
    if delay is not None:
        retry = any_pb2.Any()
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromTimedelta(timedelta(seconds=delay))
        retry.Pack(retry_info)
        details.append(retry)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
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
    return _detail_in(trailing_metadata, error_details_pb2.ErrorInfo)


def retry_delay_of(error: grpc.RpcError) -> float | None:
    """The seconds a failed call's ``google.rpc.RetryInfo`` asks to wait before trying again, or
    None when the status carries none (the call is not worth repeating as it was)."""
    trailing = getattr(error, "trailing_metadata", None)
    return retry_delay_in(trailing() if callable(trailing) else None)


def retry_delay_in(trailing_metadata: Any) -> float | None:
    """The ``RetryInfo.retry_delay`` in a call's trailing metadata, in seconds, or None."""
    info = _detail_in(trailing_metadata, error_details_pb2.RetryInfo)
    return None if info is None else float(info.retry_delay.ToTimedelta().total_seconds())


def _detail_in(trailing_metadata: Any, message_type: Any) -> Any:
    """The first detail of type ``message_type`` in the status in trailing metadata, or None."""
    for item in trailing_metadata or ():
        key, value = item[0], item[1]
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                found = message_type()
                if detail.Unpack(found):
                    return found
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
    return factory(kind_of(code), reason, message_of(error))
