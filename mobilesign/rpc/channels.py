"""Client channels: mutual TLS for internal calls, server-authenticated TLS for the public edge.

Internal channels carry the request id of the call being served (``x-request-id``, from
:data:`request_id`, which the server interceptor sets) on every call they make, so that one
phone request can be followed through every service's log; with tracing on (see
:func:`enable_tracing`) each call is a client span whose W3C ``traceparent`` goes along too.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import propagate, trace

#: Request id of the RPC the current task serves (None outside a call), set by the server
#: interceptor and forwarded by the internal channels.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
REQUEST_ID_KEY = "x-request-id"

_tracer = trace.get_tracer("mobilesign.rpc")
# Off until a service's tracing configuration turns it on: then, and only then, calls cost a
# span each.
_tracing = False


def enable_tracing() -> None:
    """Make every call on an internal channel a client span, its context sent as
    ``traceparent`` (called once, when the process exports spans)."""
    global _tracing  # one switch for the process, set once at start-up
    _tracing = True


def tracing_enabled() -> bool:
    """Whether calls are traced (see :func:`enable_tracing`)."""
    return _tracing


class _Forwarding(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds the current request id (and, when tracing, a client span's ``traceparent``) to the
    metadata of every call, whichever its kind."""

    async def _call(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        rid = request_id.get()
        if rid is None and not _tracing:
            return await continuation(details, request)
        metadata = list(details.metadata or ())
        if rid is not None and not any(key == REQUEST_ID_KEY for key, _ in metadata):
            metadata.append((REQUEST_ID_KEY, rid))
        if not _tracing:
            return await continuation(_with_metadata(details, metadata), request)
        # Typed as str, but grpc.aio passes the method as bytes.
        raw: Any = details.method
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        service, _, name = method.lstrip("/").partition("/")
        span = _tracer.start_span(
            method.lstrip("/"),
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata.extend(carrier.items())
        try:
            call = await continuation(_with_metadata(details, metadata), request)
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda _: span.end())
        return call

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Forward the request id on a unary call."""
        return await self._call(continuation, details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Forward the request id on a server-streaming call."""
        return await self._call(continuation, details, request)

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        """Forward the request id on a client-streaming call."""
        return await self._call(continuation, details, request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        """Forward the request id on a bidirectional stream."""
        return await self._call(continuation, details, request_iterator)


def _with_metadata(
    details: grpc.aio.ClientCallDetails, metadata: list[tuple[str, Any]]
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


@dataclass(frozen=True)
class Credential:
    """Paths of one identity's certificate and private key, and of the CA that issued it."""

    name: str
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (certificate chain PEM, private key PEM, CA certificate PEM)."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options (client and server alike) bounding message sizes and keeping idle
    connections healthy."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


#: Reconnection after a peer restarts: gRPC's defaults back off from 1 s up to 120 s, so a
#: caller kept answering UNAVAILABLE for seconds after its callee was serving again. Peers are
#: on loopback or a local network, so a retry every quarter second at most costs nothing. The
#: minimum is gRPC's connection timeout too: a TLS handshake with a busy peer may take longer
#: than the first back-off.
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 2_000),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def mutual_tls(
    address: str,
    credential: Credential,
    server_identity: str,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.aio.Channel:
    """A channel presenting ``credential``, trusting only the internal CA, and accepting only a
    server whose certificate names ``server_identity`` (so that one internal service cannot pose
    as another: every certificate of the internal CA is otherwise valid for 127.0.0.1). Its
    calls carry the current request id (and trace context)."""
    cert, key, ca = credential.read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    channel_options = [
        *options(max_message_bytes),
        *RECONNECT_OPTIONS,
        ("grpc.ssl_target_name_override", server_identity),
    ]
    # Only internal channels forward: the phone's (server_tls) have no call being served, and
    # a channel with interceptors costs a task per call.
    return grpc.aio.secure_channel(
        address, creds, options=channel_options, interceptors=[_Forwarding()]
    )


def server_tls(
    address: str, ca_pem: bytes, max_message_bytes: int = 4 * 1024 * 1024
) -> grpc.aio.Channel:
    """A channel that authenticates the server against ``ca_pem`` and presents no certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    channel_options = [*options(max_message_bytes), *RECONNECT_OPTIONS]
    return grpc.aio.secure_channel(address, creds, options=channel_options)
