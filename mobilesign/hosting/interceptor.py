"""One server interceptor for every mobilesign service: request ids, access control, logging,
metrics, tracing and the translation of :class:`mobilesign.errors.Error` into a status with
details.

Only the service's own methods are wrapped; health and reflection pass through untouched. On a
public listener it also bounds the calls in flight from one peer address.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, cast
from urllib.parse import unquote

import grpc

from mobilesign.errors import Error, Kind
from mobilesign.hosting import access, logs, metrics, tracing
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


#: IPv6 peers are counted by their /64: one subscriber is usually given a whole /64, so
#: counting single addresses would let one stranger appear as billions of peers.
IPV6_PEER_PREFIX = 64


def peer_address(peer: str) -> str:
    """The address a call's ``context.peer()`` counts against: the IPv4 address, or the IPv6
    /64 (an IPv4-mapped IPv6 address counts as its IPv4 address), without the port.

    Anything else (a Unix socket, an unparsable string) is returned unchanged, so that it is
    still one peer and never several."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6") or not rest:
        return peer
    host = unquote(rest).rsplit(":", 1)[0].strip("[]")
    counted = host_address(host)
    return peer if counted is None else counted


def host_address(host: str) -> str | None:
    """The address a client at IP address ``host`` counts against (see :func:`peer_address`),
    or None when ``host`` is no IP address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PEER_PREFIX), strict=False))
    return str(address)


class PeerCounter:
    """Calls in flight per peer address, refused beyond ``limit``.

    Entries exist only while a call is in flight, so strangers cannot grow it beyond the
    server's own concurrency limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, peer: str) -> None:
        """Count one more call from ``peer``, or raise EXHAUSTED ``TOO_MANY_RPCS_FROM_PEER``."""
        count = self._counts.get(peer, 0)
        if count >= self.limit:
            raise Error(
                Kind.EXHAUSTED,
                "TOO_MANY_RPCS_FROM_PEER",
                f"at most {self.limit} calls at a time from one address",
            )
        self._counts[peer] = count + 1

    def release(self, peer: str) -> None:
        """One call from ``peer`` ended."""
        count = self._counts.pop(peer, 0) - 1
        if count > 0:
            self._counts[peer] = count

    def in_flight(self, peer: str) -> int:
        """The calls from ``peer`` in flight now."""
        return self._counts.get(peer, 0)


async def first_request(context: grpc.aio.ServicerContext[Any, Any], seconds: float) -> Any:
    """The one request message of a unary call served as a stream, within ``seconds`` of
    the call's start (DEADLINE_EXCEEDED ``FIRST_MESSAGE_TIMEOUT`` otherwise)."""
    try:
        # asyncio.timeout, not wait_for: no task per call.
        async with asyncio.timeout(seconds):
            request = await context.read()
    except TimeoutError:
        raise Error(
            Kind.TIMEOUT,
            "FIRST_MESSAGE_TIMEOUT",
            f"no request message within {seconds:g} s of the call's start",
        ) from None
    if request is grpc.aio.EOF:
        if context.cancelled():  # the caller went away before sending: not a bad request
            raise asyncio.CancelledError
        raise malformed_request()
    if isinstance(request, Malformed):
        raise request.error
    return request


def _request_read_first(behavior: Behavior, timeout: float) -> Behavior:
    async def read_then_handle(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(await first_request(context, timeout), context)

    return read_then_handle


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Error) -> NoReturn:
    """End the call with ``exc`` as its status: the code of its kind, its reason and metadata in
    the ``ErrorInfo``, and a ``RetryInfo`` when it is worth trying again."""
    code = status.code_of(exc.kind)
    message = status.wire_message(exc.reason, exc.message)
    await context.abort(
        code,
        message,
        trailing_metadata=status.status_metadata(code, exc.reason, message, exc.metadata),
    )


def _counted(
    handler: grpc.RpcMethodHandler[Any, Any],
    counter: PeerCounter,
    first_message_timeout: float | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` (any of the four kinds, coroutine or async generator) with its calls counted
    against their peer's address; with ``first_message_timeout``, a unary request is read as a
    stream's first message (as for the services' own methods)."""
    read_first = first_message_timeout is not None and handler.request_streaming is False

    async def begin(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, Any]:
        address = peer_address(context.peer())
        try:
            counter.acquire(address)
        except Error as exc:
            await _abort(context, exc)
        if read_first and first_message_timeout is not None:
            try:
                request = await first_request(context, first_message_timeout)
            except Error as exc:
                counter.release(address)
                await _abort(context, exc)
        return address, request

    def wrap(behavior: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                address, request = await begin(request, context)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    counter.release(address)

            return streaming

        async def plain(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            address, request = await begin(request, context)
            try:
                return await behavior(request, context)
            finally:
                counter.release(address)

        return plain

    # Read first, a unary request becomes a stream's first message (the same bytes on the wire).
    kinds: tuple[tuple[Any, Any], ...] = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    if read_first:
        kinds = (
            (handler.unary_unary, grpc.stream_unary_rpc_method_handler),
            (handler.unary_stream, grpc.stream_stream_rpc_method_handler),
        )
    for behavior, make in kinds:
        if behavior is not None:
            counted: grpc.RpcMethodHandler[Any, Any] = make(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return counted
    return handler


def _request_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` when it is well formed (it goes into logs and onward
    calls), or a fresh one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the unary and streaming handlers of the given services (``package.Service``);
    with ``max_rpcs_per_peer``, at most that many of their calls from one peer address (see
    :func:`peer_address`) are in flight at a time.

    With ``first_message_timeout``, a unary call whose request does not arrive within that many
    seconds of its start ends with DEADLINE_EXCEEDED ``FIRST_MESSAGE_TIMEOUT``: grpc would
    otherwise wait for it for ever, holding a place of the server's concurrency limit, before
    any handler (or the per-peer count) sees the call."""

    def __init__(
        self,
        policies: Mapping[str, access.AccessPolicy],
        max_message_bytes: int,
        *,
        max_rpcs_per_peer: int | None = None,
        first_message_timeout: float | None = None,
    ) -> None:
        self._policies = dict(policies)
        self._max_message_bytes = max_message_bytes
        self._peers = None if max_rpcs_per_peer is None else PeerCounter(max_rpcs_per_peer)
        self._first_message_timeout = first_message_timeout

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
        if handler is None:
            return None
        if policy is None:
            # Health and reflection: untouched, but counted against the peer too, or their
            # streams (Watch, ServerReflectionInfo) would be a way round the cap.
            if self._peers is None:
                return handler
            return _counted(handler, self._peers, self._first_message_timeout)
        deserializer = _tolerant(handler.request_deserializer, self._max_message_bytes)
        if handler.unary_unary is not None and self._first_message_timeout is not None:
            # Served as client-streaming (the same bytes on the wire), so that the handler runs
            # from the call's start and can stop waiting for the request.
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(
                    service,
                    method,
                    policy,
                    _request_read_first(
                        cast(Behavior, handler.unary_unary), self._first_message_timeout
                    ),
                    unary=False,
                ),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(
                    service, method, policy, cast(Behavior, handler.unary_unary), unary=True
                ),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(
                    service, method, policy, cast(Behavior, handler.stream_stream), unary=False
                ),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{full}: only unary and bidirectional-streaming RPCs are served")

    def _wrap(
        self,
        service: str,
        method: str,
        policy: access.AccessPolicy,
        behavior: Behavior,
        *,
        unary: bool,
    ) -> Behavior:
        if inspect.isasyncgenfunction(behavior):
            raise TypeError(f"{method}: streaming handlers must use context.read()/write()")

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata = context.invocation_metadata()
            rid = _request_id(metadata)
            logs.request_id.set(rid)
            with tracing.server_span(service, method, metadata) as span:
                return await served(request, context, rid, span)

        async def served(
            request: Any, context: grpc.aio.ServicerContext[Any, Any], rid: str, span: Any
        ) -> Any:
            identity = access.peer_identity(context)
            access.caller.set(identity)
            started = time.perf_counter()
            outcome = "OK"
            reason = ""
            peer: str | None = None
            try:
                if self._peers is not None:
                    address = peer_address(context.peer())
                    self._peers.acquire(address)
                    peer = address
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
                outcome, reason = status.code_of(exc.kind).name, exc.reason
                await _abort(context, exc)
            except grpc.aio.AbortError:
                outcome = "ABORTED_BY_HANDLER"
                raise
            except asyncio.CancelledError:
                # The caller went away (or cancelled): counted as such, not as a success.
                outcome = "CANCELLED"
                raise
            except Exception:
                outcome, reason = "INTERNAL", "INTERNAL"
                _log.exception("unexpected failure", extra={"fields": {"method": method}})
                await _abort(context, Error(Kind.INTERNAL, "INTERNAL", "internal error"))
            finally:
                if peer is not None and self._peers is not None:
                    self._peers.release(peer)
                seconds = time.perf_counter() - started
                metrics.rpc_done(service, method, outcome, reason, seconds)
                tracing.end_server_span(span, outcome, reason)
                _log.info(
                    "rpc",
                    extra={
                        "fields": {
                            "method": method,
                            "caller": identity,
                            "code": outcome,
                            "reason": reason,
                            "ms": round(seconds * 1000, 2),
                        }
                    },
                )

        return wrapped
