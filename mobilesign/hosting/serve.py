"""Server lifecycle shared by the services: TLS listeners, limits, health, reflection, shutdown.

A service is served on one or two listeners: ``internal`` requires a client certificate from the
internal CA (mutual TLS); ``public`` (the phone-facing edge) authenticates the server only.
Each listener is its own gRPC server with its own concurrency limit, so that strangers flooding
the public edge cannot use up the capacity the internal callers need; a listener may also cap
the calls in flight from one peer address.
Once bound, the actual addresses are written to ``<state_dir>/run/<name>.json`` so that a
supervisor (or the test harness) that asked for port 0 learns the ports without racing.
Optionally, a plaintext health listener (``health``) and a Prometheus endpoint (``metrics``)
are bound too, and so are sidecars (listeners that are not gRPC, such as the gateway's CSC
endpoint), listed in that file beside the others. One health servicer answers on every
listener; a watcher (:mod:`mobilesign.hosting.health`) turns a service NOT_SERVING while a
peer it needs fails its check.
Reflection answers as both ``grpc.reflection.v1`` and ``v1alpha``, and resolves the
``google.rpc`` error details. A public listener offers (in reflection and health) only the
services with a method open to callers without a certificate; the others' methods are refused
there as everywhere such a caller calls them.
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
from typing import Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

# Imported for their descriptors: with them in the pool, reflection resolves the google.rpc types
# of every error's details (grpcurl decodes ``grpc-status-details-bin`` through reflection).
from google.rpc import error_details_pb2, status_pb2  # noqa: F401
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

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


class Sidecar(Protocol):
    """A listener that is not gRPC (an HTTP API, say), served for the service's lifetime."""

    @property
    def name(self) -> str:
        """Its name in the run file."""

    async def start(self) -> str:
        """Bind and start serving; returns the bound ``HOST:PORT``."""

    async def stop(self, grace_seconds: float) -> None:
        """Stop, letting requests in flight finish for up to ``grace_seconds``."""


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one service from being overwhelmed by a caller."""

    max_message_bytes: int
    #: Per listener (each is its own server), unless the listener sets its own.
    max_concurrent_rpcs: int
    grace_seconds: float


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _add_reflection_v1() -> None:
    # grpcio-reflection (1.85) has only v1alpha. v1 is the same file under another package, field
    # for field, so v1alpha's servicer answers it; its descriptor is added so that reflection
    # describes itself under both names.
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    file.options.Clear()
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.java_multiple_files = True
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"

    def v1(type_name: str) -> str:
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = v1(field.type_name)
    for method in file.service[0].method:
        method.input_type, method.output_type = v1(method.input_type), v1(method.output_type)
    descriptor_pool.Default().AddSerializedFile(file.SerializeToString())


_add_reflection_v1()


def _enable_reflection(server: grpc.aio.Server, names: Sequence[str]) -> None:
    servicer = reflection.aio.ReflectionServicer((*names, reflection.SERVICE_NAME, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def offered(
    services: Mapping[str, access.AccessPolicy], listener: Listener
) -> dict[str, access.AccessPolicy]:
    """The services ``listener`` advertises: all of them when it is mutual; on a public one,
    those with at least one method open to callers without a client certificate."""
    if listener.mutual:
        return dict(services)
    return {
        name: policy
        for name, policy in services.items()
        if any(policy.allows(method, None) for method in policy.rules)
    }


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
    health_servicer: health.HealthServicer,
) -> grpc.aio.Server:
    """One listener's server: the services, health and reflection, within its own limits.

    Health and reflection know only the services the listener offers (:func:`offered`); every
    service is registered and checked by the interceptor, so that a hidden one's methods are
    refused by its policy like any other."""
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
    names = list(offered(services, listener))
    health_pb2_grpc.add_HealthServicer_to_server(health.Offered(health_servicer, names), server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    _enable_reflection(server, (*names, health_name))
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
    sidecars: Sequence[Sidecar] = (),
) -> None:
    """Serve ``services`` (name: access policy) until SIGTERM/SIGINT, then shut down gracefully.

    ``register`` adds the service implementations to a server; it is called once per listener.
    ``peers`` are checked while serving (see :func:`health.watch`); ``health_listen`` and
    ``metrics_listen`` (``HOST:PORT``, empty: none) add the plaintext health listener and the
    Prometheus endpoint; ``sidecars`` are served beside the gRPC listeners (started after them,
    stopped with them) and listed in the run file under their names.
    """
    # One servicer for every listener, so that they all tell the same story.
    health_servicer = health.HealthServicer()
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
    for sidecar in sidecars:
        bound[sidecar.name] = await sidecar.start()
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
    await asyncio.gather(
        *(server.stop(limits.grace_seconds) for server in servers),
        *(sidecar.stop(limits.grace_seconds) for sidecar in sidecars),
    )
    if plaintext is not None:
        await plaintext.stop(None)
    if exporter is not None:
        exporter.close()
    run_file.unlink(missing_ok=True)
    _log.info("stopped")
