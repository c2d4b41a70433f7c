"""OpenTelemetry tracing of a service process, off unless the standard variables ask for it.

``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or both comma-separated; ``none`` or unset:
off) chooses the exporter; ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) alone
means ``otlp``. The OTLP exporter reads the rest of its ``OTEL_EXPORTER_OTLP_*`` settings
itself, and the resource ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``.

When tracing is on, spans are made around served RPCs (:func:`server_span`, with the caller's
W3C ``traceparent`` as parent), calls on internal channels (:mod:`mobilesign.rpc.channels`),
PKCS#11 operations (:func:`span`) and database transactions (every
:meth:`~mobilesign.storage.database.Database.run`, wrapped from here). When it is off, none of
this runs: :func:`span` and :func:`server_span` return a shared no-op context manager and the
database is left as it is. Spans carry method and operation names and status codes, never
request contents, keys, PINs or tokens.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mobilesign.rpc import channels
from mobilesign.storage.database import Database

T = TypeVar("T")
_log = logging.getLogger("mobilesign.tracing")
_tracer = trace.get_tracer("mobilesign")
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled() -> bool:
    """Whether this process makes spans."""
    return channels.tracing_enabled()


def _exporters() -> list[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = "otlp"
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        # Imported only when asked for: it pulls in a second gRPC stack's worth of modules.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")


def configure(service: str) -> Callable[[], None] | None:
    """Turn tracing on for this process when the ``OTEL_*`` variables ask for an exporter;
    returns the function that flushes and stops it at shutdown, or None when it stays off."""
    names = _exporters()
    if not names:
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    channels.enable_tracing()
    _trace_database()
    _log.info("tracing", extra={"fields": {"exporters": names}})
    return provider.shutdown


def _trace_database() -> None:
    """Make every :meth:`Database.run` (one transaction, or one query) a span.

    Wrapped from here, so that the storage layer knows nothing of tracing and pays nothing
    for it when tracing is off."""
    run = Database.run

    @functools.wraps(run)
    async def traced(self: Database, function: Callable[[Any], T]) -> T:
        name = getattr(function, "__qualname__", "function")
        with _tracer.start_as_current_span(
            "db.run", kind=SpanKind.CLIENT, attributes={"code.function": name}
        ):
            return await run(self, function)

    Database.run = traced  # type: ignore[method-assign,assignment]


def span(name: str, **attributes: str | int) -> contextlib.AbstractContextManager[Any]:
    """A span called ``name`` around a block when tracing is on; a no-op otherwise."""
    if not enabled():
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def _server_span(service: str, method: str, metadata: Iterable[tuple[str, Any]]) -> Iterator[Span]:
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    with _tracer.start_as_current_span(
        f"{service}/{method}",
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        yield current


def server_span(
    service: str, method: str, metadata: Iterable[tuple[str, Any]] | None
) -> contextlib.AbstractContextManager[Span | None]:
    """The span of one served RPC, child of the caller's ``traceparent`` when it sent one; a
    no-op when tracing is off."""
    if not enabled():
        return _NOTHING
    return _server_span(service, method, metadata or ())


def end_server_span(current: Span | None, code: str, reason: str) -> None:
    """Record how the RPC ended on its span (nothing when tracing is off)."""
    if current is None:
        return
    current.set_attribute("rpc.grpc.status_code", code)
    if reason:
        current.set_attribute("mobilesign.reason", reason)
    if code != "OK":
        current.set_status(Status(StatusCode.ERROR, code))
