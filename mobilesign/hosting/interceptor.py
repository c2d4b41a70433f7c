"""One server interceptor for every mobilesign service: request ids, access control, logging and
the translation of :class:`mobilesign.errors.Error` into a status with details.

Only the service's own methods are wrapped; health and reflection pass through untouched.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import grpc

from mobilesign.errors import Error, Kind
from mobilesign.hosting import access, logs
from mobilesign.rpc import status
from mobilesign.rpc.wire import malformed_request, message_too_large

_log = logging.getLogger("mobilesign.rpc")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


#: The transport accepts messages up to this many times the application's limit, so that a
#: request over the limit but not absurdly so gets a clear reason (MESSAGE_TOO_LARGE) instead
#: of grpc's bare RESOURCE_EXHAUSTED.
TRANSPORT_FACTOR = 2


class Malformed:
    """Stands for a request message that was refused before parsing or did not parse (stream
    readers check for it); ``error`` is what to answer."""

    def __init__(self, error: Error) -> None:
        self.error = error


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, max_message_bytes: int
) -> Callable[[bytes], Any] | None:
    # grpc answers a deserializer exception with INTERNAL; a bad message is the caller's fault,
    # so the failure is handed to the handler, which answers with its reason.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        if len(data) > max_message_bytes:
            return Malformed(message_too_large(max_message_bytes))
        try:
            return deserializer(data)
        except Exception:
            return Malformed(malformed_request())

    return parse


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the unary and streaming handlers of the given services (``package.Service``)."""

    def __init__(self, policies: Mapping[str, access.AccessPolicy], max_message_bytes: int) -> None:
        self._policies = dict(policies)
        self._max_message_bytes = max_message_bytes

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        service, _, method = full.lstrip("/").partition("/")
        policy = self._policies.get(service)
        if handler is None or policy is None:
            return handler
        deserializer = _tolerant(handler.request_deserializer, self._max_message_bytes)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, policy, cast(Behavior, handler.unary_unary), unary=True),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(method, policy, cast(Behavior, handler.stream_stream), unary=False),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{full}: only unary and bidirectional-streaming RPCs are served")

    def _wrap(
        self, method: str, policy: access.AccessPolicy, behavior: Behavior, *, unary: bool
    ) -> Behavior:
        if inspect.isasyncgenfunction(behavior):
            raise TypeError(f"{method}: streaming handlers must use context.read()/write()")

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            rid = _request_id(context)
            logs.request_id.set(rid)
            identity = access.peer_identity(context)
            access.caller.set(identity)
            started = time.perf_counter()
            outcome = "OK"
            reason = ""
            try:
                await context.send_initial_metadata((("x-request-id", rid),))
                if not policy.allows(method, identity):
                    raise access.AccessError(
                        Kind.DENIED if identity else Kind.UNAUTHENTICATED,
                        "CALLER_NOT_AUTHORISED",
                        f"{identity or 'a caller without a client certificate'} may not call "
                        f"{method}",
                    )
                if unary and isinstance(request, Malformed):
                    raise request.error
                return await behavior(request, context)
            except Error as exc:
                code = status.code_of(exc.kind)
                outcome, reason = code.name, exc.reason
                await context.abort(
                    code,
                    exc.message,
                    trailing_metadata=status.status_metadata(
                        code, exc.reason, exc.message, exc.metadata
                    ),
                )
            except grpc.aio.AbortError:
                outcome = "ABORTED_BY_HANDLER"
                raise
            except Exception:
                outcome, reason = "INTERNAL", "INTERNAL"
                _log.exception("unexpected failure", extra={"fields": {"method": method}})
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    "internal error",
                    trailing_metadata=status.status_metadata(
                        grpc.StatusCode.INTERNAL, "INTERNAL", "internal error"
                    ),
                )
            finally:
                _log.info(
                    "rpc",
                    extra={
                        "fields": {
                            "method": method,
                            "caller": identity,
                            "code": outcome,
                            "reason": reason,
                            "ms": round((time.perf_counter() - started) * 1000, 2),
                        }
                    },
                )

        return wrapped
