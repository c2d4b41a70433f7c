"""Prometheus metrics of one service process, served over plain HTTP on ``metrics_listen``.

Every metric lives in :data:`REGISTRY`, this process's own registry (not prometheus_client's
global one, so that nothing a library registers there leaks into a scrape). Labels carry
method names, status codes, stable error reasons and operation names, never an identifier
chosen by a caller (key ids, user ids) and never a secret: each label has a small, fixed set of
values, so the number of series stays bounded whatever the callers send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: This process's registry: what ``/metrics`` on ``metrics_listen`` answers.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# Latencies on loopback run from tens of microseconds (a cached answer) to seconds (an RSA key
# generation in the token), hence buckets wider than prometheus_client's defaults.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RPCS = Counter(
    "mobilesign_rpc_requests",
    "RPCs served, by gRPC service, method, status code and stable error reason ('' when OK).",
    ["service", "method", "code", "reason"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "mobilesign_rpc_duration_seconds",
    "Time from a call's start to its answer (a stream: to its end), by service, method, "
    "status code and reason.",
    ["service", "method", "code", "reason"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
PEER_UP = Gauge(
    "mobilesign_peer_up",
    "1 when the last health check of a required peer (the HSM proxy, the database) passed.",
    ["peer"],
    registry=REGISTRY,
)

HSM_QUEUE_DEPTH = Gauge(
    "mobilesign_hsm_queue_depth",
    "PKCS#11 operations waiting for a token worker or running on one.",
    registry=REGISTRY,
)
HSM_QUEUE_CAPACITY = Gauge(
    "mobilesign_hsm_queue_capacity",
    "Operations the token pool accepts at once (workers + queue_size); beyond it HSM_QUEUE_FULL.",
    registry=REGISTRY,
)
HSM_QUEUE_WAIT_SECONDS = Histogram(
    "mobilesign_hsm_queue_wait_seconds",
    "Time a PKCS#11 operation waited for a token worker.",
    buckets=_SECONDS,
    registry=REGISTRY,
)
HSM_OPERATION_SECONDS = Histogram(
    "mobilesign_hsm_operation_duration_seconds",
    "Time a PKCS#11 operation ran in the token, by operation and outcome (ok, error).",
    ["operation", "outcome"],
    buckets=_SECONDS,
    registry=REGISTRY,
)

AUDIT_APPENDS = Counter(
    "mobilesign_audit_log_appends",
    "Entries this gateway appended to the audit log, by kind (use, outcome).",
    ["kind"],
    registry=REGISTRY,
)

PIN_FAILURES = Counter(
    "mobilesign_cosigner_pin_failures",
    "Wrong PIN proofs (the attempts on a key already locked are not counted).",
    registry=REGISTRY,
)
KEY_LOCKOUTS = Counter(
    "mobilesign_cosigner_key_lockouts",
    "Keys this cosigner locked after their last allowed wrong PIN.",
    registry=REGISTRY,
)
LOCKED_KEYS = Gauge(
    "mobilesign_cosigner_locked_keys",
    "Keys locked in the cosigner's store (all replicas), as of the last database health check.",
    registry=REGISTRY,
)
SIGNING_SESSIONS = Gauge(
    "mobilesign_cosigner_signing_sessions",
    "Signing sessions (Sign streams) open now.",
    registry=REGISTRY,
)


class _AuditLogCollector(Collector):
    """The audit log's size and committed batches, read from the ledger at each scrape."""

    def __init__(self, size: Callable[[], int], batches: Callable[[], int]) -> None:
        self._size = size
        self._batches = batches

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "mobilesign_audit_log_entries",
            "Entries in the audit log, as far as this gateway has seen.",
            value=self._size(),
        )
        yield CounterMetricFamily(
            "mobilesign_audit_log_batches",
            "Batches (one transaction each) this gateway committed to the log; appends divided "
            "by batches is the mean batch size.",
            value=self._batches(),
        )


def observe_audit_log(size: Callable[[], int], batches: Callable[[], int]) -> None:
    """Report the audit log's size and committed batches (read at each scrape, so they cost
    nothing between scrapes). Called once, by the gateway."""
    REGISTRY.register(_AuditLogCollector(size, batches))


def rpc_done(service: str, method: str, code: str, reason: str, seconds: float) -> None:
    """Count one served RPC and its latency."""
    RPCS.labels(service, method, code, reason).inc()
    RPC_SECONDS.labels(service, method, code, reason).observe(seconds)


class MetricsServer:
    """prometheus_client's HTTP server (a thread of its own) answering with :data:`REGISTRY`."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The port bound (useful when ``metrics_listen`` asked for port 0)."""
        return int(self._httpd.server_port)

    def close(self) -> None:
        """Stop answering and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def start(address: str) -> MetricsServer:
    """Serve ``/metrics`` over plain HTTP on ``address`` (``HOST:PORT``; port 0 picks one)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"metrics_listen must be HOST:PORT, not {address!r}")
    httpd, thread = start_http_server(int(port), addr=host.strip("[]"), registry=REGISTRY)
    return MetricsServer(httpd, thread)
