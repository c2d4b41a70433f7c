"""The metrics endpoint, the health watcher and the request id's forwarding, in one process:
a scrape shows what was counted; a failing peer turns only its services NOT_SERVING, and a
passing one turns them back; a call on an internal channel carries the id of the call being
served, and a call made outside one carries none."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client.parser import text_string_to_metric_families

from mobilesign.hosting import devpki, health, metrics, tracing
from mobilesign.rpc import channels


def _scrape(port: int) -> dict[str, list[Any]]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_a_scrape_shows_what_was_counted() -> None:
    server = metrics.start("127.0.0.1:0")
    try:
        metrics.rpc_done("test.v1.Unit", "Count", "NOT_FOUND", "NO_SUCH_THING", 0.003)
        families = _scrape(server.port)
    finally:
        server.close()
    (sample,) = [
        s
        for s in families["mobilesign_rpc_requests"]
        if s.labels.get("method") == "Count" and s.name.endswith("_total")
    ]
    assert sample.labels == {
        "service": "test.v1.Unit",
        "method": "Count",
        "code": "NOT_FOUND",
        "reason": "NO_SUCH_THING",
    }
    assert sample.value >= 1
    assert "process_cpu_seconds" in families


def test_the_address_must_name_a_port() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.start("localhost")


class _Switch:
    """A peer check that fails while ``down``."""

    def __init__(self) -> None:
        self.down = False

    async def check(self) -> None:
        if self.down:
            raise ConnectionError("down")


async def _status(servicer: health_aio.HealthServicer, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    reply = await servicer.Check(request, None)
    return int(reply.status)


async def _settle(servicer: health_aio.HealthServicer, wanted: dict[str, int]) -> None:
    # The watcher checks every 10 ms: a few hundred rounds is seconds of slack.
    for _ in range(500):
        if {s: await _status(servicer, s) for s in wanted} == wanted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {wanted}")


async def test_a_failing_peer_turns_its_services_not_serving_until_it_passes() -> None:
    servicer = health_aio.HealthServicer()
    services: Sequence[str] = ("a.A", "b.B")
    for service in ("", *services):
        await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    hsm, database = _Switch(), _Switch()
    peers = [
        health.Peer("hsm-proxy", hsm.check, services=("a.A",)),
        health.Peer("database", database.check),
    ]
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    watcher = asyncio.create_task(health.watch(servicer, services, peers, interval=0.01))
    try:
        hsm.down = True
        await _settle(servicer, {"": serving, "a.A": not_serving, "b.B": serving})
        database.down = True
        await _settle(servicer, {"": serving, "a.A": not_serving, "b.B": not_serving})
        hsm.down = database.down = False
        await _settle(servicer, {"": serving, "a.A": serving, "b.B": serving})
    finally:
        watcher.cancel()


class _Recorder(grpc.aio.ServerInterceptor):
    """Keeps the metadata of every call the server receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.append({k: v for k, v in details.invocation_metadata if isinstance(v, str)})
        return await continuation(details)


async def test_internal_channels_forward_the_request_id(tmp_path: Path) -> None:
    cert, key, ca = devpki.credential(tmp_path, "hsm-proxy").read()
    recorder = _Recorder()
    server = grpc.aio.server(interceptors=[recorder])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True),
    )
    await server.start()
    try:
        channel = channels.mutual_tls(
            f"127.0.0.1:{port}", devpki.credential(tmp_path, "gateway"), "hsm-proxy"
        )
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def serving_a_call() -> None:
                channels.request_id.set("phone-1234")
                await stub.Check(health_pb2.HealthCheckRequest())

            # A task of its own, as the server gives each call: the id stays in it.
            await asyncio.create_task(serving_a_call())
            await stub.Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    assert recorder.seen[0].get("x-request-id") == "phone-1234"
    assert "x-request-id" not in recorder.seen[1]
    # Tracing is off unless asked for: no trace context goes along either.
    assert not tracing.enabled()
    assert all("traceparent" not in seen for seen in recorder.seen)
