"""Health that follows the peers a service needs: a watcher checks each required peer (the HSM
proxy, the database) every few seconds and turns the service names that depend on it
NOT_SERVING while it fails, SERVING again once it passes.

The whole-server status (service ``""``) is left alone: it says the process is up and answering
(a liveness check), while a service name says whether that service can do its work (a readiness
check). Restarting a caller because its callee is down would only add a second outage.

The servicer also answers ``List``; a listener that offers only some of the services (the
public edge) answers through :class:`Offered`, which knows only those names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from mobilesign.hosting import metrics
from mobilesign.storage.database import Database

_log = logging.getLogger("mobilesign.health")

#: Seconds between two rounds of checks, and the time one check may take.
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 2.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Peer:
    """A required peer: ``check`` returns when it is usable and raises otherwise; ``services``
    are the names that go NOT_SERVING while it fails (None: every service of the process)."""

    name: str
    check: Callable[[], Awaitable[object]]
    services: Collection[str] | None = None


def grpc_peer(name: str, channel: grpc.aio.Channel, service: str) -> Peer:
    """A peer checked by asking its own health service about ``service`` over ``channel``."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> None:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        if reply.status != _SERVING:
            raise RuntimeError(f"{name} reports {reply.status}")

    return Peer(name, check)


def _select_one(connection: object) -> object:
    # The cheapest statement either back end answers: it needs the connection, nothing else.
    return connection.execute("SELECT 1").fetchone()  # type: ignore[attr-defined]


def database_peer(*databases: Database) -> Peer:
    """The service's database(s), checked with a trivial query through each one's thread (so a
    stuck thread counts as down, as it is for the service's own transactions)."""

    async def check() -> None:
        for database in databases:
            await database.run(_select_one)

    return Peer("database", check)


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer with ``List``, which its proto (and so reflection)
    advertises but its servicer answers UNIMPLEMENTED (grpcio-health-checking 1.85)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """Every name with a status (the server's ``""`` too), as a snapshot."""
        return _listed(self._server_status.items())


def _listed(statuses: Iterable[tuple[str, Any]]) -> health_pb2.HealthListResponse:
    return health_pb2.HealthListResponse(
        statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses}
    )


class Offered(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``health`` as seen on a listener that offers only the services ``names``: any other name
    is unknown there (NOT_FOUND, SERVICE_UNKNOWN, left out of ``List``), as if not served. The
    server's own ``""`` is always known."""

    def __init__(self, health: HealthServicer, names: Collection[str]) -> None:
        self._health = health
        self._names = frozenset(("", *names))

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        """The status of an offered name, NOT_FOUND for any other."""
        if request.service not in self._names:
            await context.abort(grpc.StatusCode.NOT_FOUND)
        return await self._health.Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The statuses of an offered name as they change; SERVICE_UNKNOWN, once, for any other,
        with the stream left open (as the library does for a name it has not been told)."""
        if request.service not in self._names:
            await context.write(
                health_pb2.HealthCheckResponse(
                    status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
            )
            await asyncio.Event().wait()  # until the caller goes: the name never appears here
            return
        await self._health.Watch(request, context)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """The offered names with a status."""
        listed = await self._health.List(request, context)
        return _listed(
            (name, reply.status) for name, reply in listed.statuses.items() if name in self._names
        )


async def _passes(peer: Peer) -> bool:
    try:
        await asyncio.wait_for(peer.check(), CHECK_TIMEOUT)
    except Exception as exc:  # any failure means "not usable now"; its type is logged
        _log.debug("peer check failed", extra={"fields": {"peer": peer.name, "error": repr(exc)}})
        return False
    return True


async def watch(
    health: health_aio.HealthServicer,
    services: Sequence[str],
    peers: Sequence[Peer],
    interval: float = CHECK_INTERVAL,
) -> None:
    """Check ``peers`` every ``interval`` seconds for ever, setting the status of each of
    ``services`` on ``health``; runs until cancelled. A change is logged once."""
    down: set[str] = set()
    while True:
        results = await asyncio.gather(*(_passes(peer) for peer in peers))
        now_down = {peer.name for peer, ok in zip(peers, results, strict=True) if not ok}
        for peer, ok in zip(peers, results, strict=True):
            metrics.PEER_UP.labels(peer.name).set(1 if ok else 0)
        for name in now_down - down:
            _log.warning("peer down", extra={"fields": {"peer": name}})
        for name in down - now_down:
            _log.info("peer back", extra={"fields": {"peer": name}})
        if now_down != down:
            for service in services:
                failing = any(
                    peer.name in now_down and (peer.services is None or service in peer.services)
                    for peer in peers
                )
                await health.set(service, _NOT_SERVING if failing else _SERVING)
        down = now_down
        await asyncio.sleep(interval)


async def serve_plaintext(
    address: str, health: health_aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """Start a server on ``address`` with only ``health`` on it, without TLS, for probes that
    present no certificate; every other method there is UNIMPLEMENTED. Returns the started
    server and the port it bound."""
    # A handful of concurrent calls is plenty for probes, and caps what strangers can hold.
    server = grpc.aio.server(maximum_concurrent_rpcs=16)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
