"""What a listener advertises: reflection as v1 and v1alpha, with the google.rpc error details
resolvable; on a public listener only the services a caller without a certificate may call (in
reflection and health), the others still refused by their policy; Health.List."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mobilesign.hosting import access, health, serve
from mobilesign.rpc import status
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc

OPEN = "mobilesign.v1.GatewayService"
CLOSED = "mobilesign.v1.HsmService"
SERVICES = {
    OPEN: access.AccessPolicy({"GetCheckpoint": access.ANYONE, "ListSessions": frozenset({"ra"})}),
    CLOSED: access.AccessPolicy({"ListKeys": frozenset({"ra", "admin"})}),
}
PUBLIC = serve.Listener("public", "127.0.0.1:0", mutual=False)
INTERNAL = serve.Listener("internal", "127.0.0.1:0", mutual=True)
ALWAYS = {"grpc.health.v1.Health", serve.REFLECTION_V1, "grpc.reflection.v1alpha.ServerReflection"}


def _message(name: str) -> Any:
    pool = descriptor_pool.Default()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def test_a_public_listener_offers_only_services_open_to_callers_without_a_certificate() -> None:
    assert serve.offered(SERVICES, INTERNAL) == SERVICES
    assert serve.offered(SERVICES, PUBLIC) == {OPEN: SERVICES[OPEN]}
    some = access.AccessPolicy({"A": frozenset({"ra", "*"})})
    assert serve.offered({"x.Y": some}, PUBLIC) == {"x.Y": some}


async def _list_keys(request: hsm_pb2.ListKeysRequest, context: Any) -> hsm_pb2.ListKeysResponse:
    return hsm_pb2.ListKeysResponse()


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _list_keys,
        request_deserializer=hsm_pb2.ListKeysRequest.FromString,
        response_serializer=hsm_pb2.ListKeysResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(CLOSED, {"ListKeys": handler}),)
    )


@dataclass
class Served:
    """A plaintext channel (no client certificate) to one listener's server, and the services
    that listener should offer."""

    channel: grpc.aio.Channel
    offered: set[str]


@pytest.fixture(params=[PUBLIC, INTERNAL], ids=["public", "internal"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """Each kind of listener's server, health and reflection as serve.serve makes them."""
    servicer = health.HealthServicer()
    for name in ("", *SERVICES):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server = serve._server(
        request.param,
        SERVICES,
        _register,
        serve.Limits(max_message_bytes=1 << 16, max_concurrent_rpcs=8, grace_seconds=0),
        servicer,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(channel, set(serve.offered(SERVICES, request.param)))
    finally:
        await server.stop(None)


async def _reflect(channel: grpc.aio.Channel, version: str, **request: str) -> Any:
    """One reflection answer, in ``version``'s own message types (v1 from the added file)."""
    package = f"grpc.reflection.{version}"
    call = channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=_message(f"{package}.ServerReflectionRequest").SerializeToString,
        response_deserializer=_message(f"{package}.ServerReflectionResponse").FromString,
    )

    async def requests() -> AsyncIterator[Any]:
        yield _message(f"{package}.ServerReflectionRequest")(**request)

    (answer,) = [answer async for answer in call(requests())]
    return answer


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_the_offered_services(served: Served, version: str) -> None:
    answer = await _reflect(served.channel, version, list_services="")
    names = {service.name for service in answer.list_services_response.service}
    assert names == ALWAYS | served.offered


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("google.rpc.ErrorInfo", "google/rpc/error_details.proto"),
        ("google.rpc.RetryInfo", "google/rpc/error_details.proto"),
        ("google.rpc.Status", "google/rpc/status.proto"),
        (serve.REFLECTION_V1, "grpc/reflection/v1/reflection.proto"),
    ],
)
async def test_reflection_resolves_the_error_details_and_itself(
    served: Served, symbol: str, file: str
) -> None:
    answer = await _reflect(served.channel, "v1", file_containing_symbol=symbol)
    files = {
        descriptor_pb2.FileDescriptorProto.FromString(data).name: data
        for data in answer.file_descriptor_response.file_descriptor_proto
    }
    assert file in files
    if symbol == serve.REFLECTION_V1:
        (method,) = descriptor_pb2.FileDescriptorProto.FromString(files[file]).service[0].method
        assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_health_lists_checks_and_watches_only_the_offered_services(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    listed = await stub.List(health_pb2.HealthListRequest())
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: reply.status for name, reply in listed.statuses.items()} == {
        name: serving for name in ("", *served.offered)
    }
    for name in SERVICES:
        if name in served.offered:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == serving
            continue
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=name))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()


async def test_a_hidden_service_is_still_refused_by_its_policy(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hsm_pb2_grpc.HsmServiceStub(served.channel).ListKeys(hsm_pb2.ListKeysRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status.reason_of(info.value) == "CALLER_NOT_AUTHORISED"
