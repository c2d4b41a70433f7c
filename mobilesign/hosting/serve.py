"""Server lifecycle shared by the services: TLS listeners, limits, health, reflection, shutdown.

A service is served on one or two listeners: ``internal`` requires a client certificate from the
internal CA (mutual TLS); ``public`` (the phone-facing edge) authenticates the server only.
Each listener is its own gRPC server with its own concurrency limit, so that strangers flooding
the public edge cannot use up the capacity the internal callers need; a listener may also cap
the calls in flight from one peer address.
Once bound, the actual addresses are written to ``<state_dir>/run/<name>.json`` so that a
supervisor (or the test harness) that asked for port 0 learns the ports without racing.
Optionally, a plaintext health listener (``health``) and a Prometheus endpoint (``metrics``)
are bound too, and listed in that file beside the others. One health servicer answers on every
listener; a watcher (:mod:`mobilesign.hosting.health`) turns a service NOT_SERVING while a
peer it needs fails its check.
On SIGTERM or SIGINT, health turns NOT_SERVING, then in-flight calls get ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mobilesign.hosting import access, health, metrics
from mobilesign.hosting.interceptor import TRANSPORT_FACTOR, ServiceInterceptor
from mobilesign.rpc import channels

_log = logging.getLogger("mobilesign.serve")


@dataclass(frozen=True)
class Listener:
    """One address to serve on; ``mutual`` requires and verifies a client certificate.

    ``credential`` overrides the service's own certificate (the public edge has its own);
    ``max_concurrent_rpcs`` overrides :attr:`Limits.max_concurrent_rpcs` for this listener, and
    ``max_rpcs_per_peer`` (None: no cap) bounds the calls in flight from one peer address, and
    ``first_message_timeout`` (None: wait as grpc does) how long a unary call may wait for its
    request."""

    name: str
    address: str
    mutual: bool
    credential: channels.Credential | None = None
    max_concurrent_rpcs: int | None = None
    max_rpcs_per_peer: int | None = None
    first_message_timeout: float | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one service from being overwhelmed by a caller."""

    max_message_bytes: int
    #: Per listener (each is its own server), unless the listener sets its own.
    max_concurrent_rpcs: int
    grace_seconds: float


def _credentials(credential: channels.Credential, mutual: bool) -> grpc.ServerCredentials:
    cert, key, ca = credential.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca if mutual else None, require_client_auth=mutual
    )


def _write_run_file(state_dir: Path, name: str, addresses: dict[str, str]) -> Path:
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    # Replicas of one service sharing a state directory (on one machine) name themselves.
    instance = os.environ.get("MOBILESIGN_INSTANCE") or name
    path = run / f"{instance}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": addresses}))
    os.replace(tmp, path)
    return path


def _server(
    listener: Listener,
    services: Mapping[str, access.AccessPolicy],
    register: Callable[[grpc.aio.Server], None],
    limits: Limits,
    health_servicer: health_aio.HealthServicer,
) -> grpc.aio.Server:
    """One listener's server: the services, health and reflection, within its own limits."""
    server = grpc.aio.server(
        interceptors=[
            ServiceInterceptor(
                services,
                limits.max_message_bytes,
                max_rpcs_per_peer=listener.max_rpcs_per_peer,
                first_message_timeout=listener.first_message_timeout,
            )
        ],
        options=channels.options(limits.max_message_bytes * TRANSPORT_FACTOR),
        maximum_concurrent_rpcs=listener.max_concurrent_rpcs or limits.max_concurrent_rpcs,
    )
    register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*services, health_name, reflection.SERVICE_NAME), server)
    return server


async def serve(
    *,
    name: str,
    services: Mapping[str, access.AccessPolicy],
    register: Callable[[grpc.aio.Server], None],
    listeners: Sequence[Listener],
    credential: channels.Credential,
    limits: Limits,
    state_dir: Path,
    peers: Sequence[health.Peer] = (),
    health_listen: str = "",
    metrics_listen: str = "",
) -> None:
    """Serve ``services`` (name: access policy) until SIGTERM/SIGINT, then shut down gracefully.

    ``register`` adds the service implementations to a server; it is called once per listener.
    ``peers`` are checked while serving (see :func:`health.watch`); ``health_listen`` and
    ``metrics_listen`` (``HOST:PORT``, empty: none) add the plaintext health listener and the
    Prometheus endpoint.
    """
    # One servicer for every listener, so that they all tell the same story.
    health_servicer = health_aio.HealthServicer()
    servers: list[grpc.aio.Server] = []
    bound: dict[str, str] = {}
    for listener in listeners:
        server = _server(listener, services, register, limits, health_servicer)
        host = listener.address.rsplit(":", 1)[0]
        port = server.add_secure_port(
            listener.address, _credentials(listener.credential or credential, listener.mutual)
        )
        if port == 0:
            raise OSError(f"cannot listen on {listener.address}")
        bound[listener.name] = f"{host}:{port}"
        servers.append(server)
    for svc in ("", *services):
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    for server in servers:
        await server.start()
    plaintext: grpc.aio.Server | None = None
    if health_listen:
        plaintext, port = await health.serve_plaintext(health_listen, health_servicer)
        bound["health"] = f"{health_listen.rsplit(':', 1)[0]}:{port}"
    exporter: metrics.MetricsServer | None = None
    if metrics_listen:
        exporter = metrics.start(metrics_listen)
        bound["metrics"] = f"{metrics_listen.rsplit(':', 1)[0]}:{exporter.port}"
    watcher = (
        asyncio.create_task(health.watch(health_servicer, list(services), peers)) if peers else None
    )
    run_file = _write_run_file(state_dir, name, bound)
    _log.info("serving", extra={"fields": {"listeners": bound}})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    _log.info("stopping", extra={"fields": {"grace_seconds": limits.grace_seconds}})
    if watcher is not None:
        watcher.cancel()
    await health_servicer.enter_graceful_shutdown()
    # Together, so that the grace period is the whole service's and not one per listener.
    await asyncio.gather(*(server.stop(limits.grace_seconds) for server in servers))
    if plaintext is not None:
        await plaintext.stop(None)
    if exporter is not None:
        exporter.close()
    run_file.unlink(missing_ok=True)
    _log.info("stopped")
