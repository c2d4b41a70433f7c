"""Errors on the wire: a refusal worth trying again carries a ``google.rpc.RetryInfo`` beside its
``ErrorInfo``, decided by the one table ``status.RETRY_DELAYS``, read back by
``status.retry_delay_of`` and the SDK's ``ClientError``; any other refusal carries none. Shown on
the status details themselves and through a real server with the services' interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from client.errors import ClientError
from mobilesign.errors import Error, Kind
from mobilesign.hosting.access import ANYONE, AccessPolicy
from mobilesign.hosting.interceptor import ServiceInterceptor
from mobilesign.rpc import status
from mobilesign.rpc.reasons import REASONS
from scripts.gen_errors_doc import scan


def _details(trailing: Any) -> list[any_pb2.Any]:
    ((key, value),) = trailing
    assert key == "grpc-status-details-bin"
    return list(status_pb2.Status.FromString(value).details)


def _failure(kind: Kind, reason: str) -> grpc.aio.AioRpcError:
    code = status.code_of(kind)
    trailing = status.status_metadata(code, reason, "refused")
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="refused"
    )


@pytest.mark.parametrize(
    ("kind", "reason", "delay"),
    [
        (Kind.UNAVAILABLE, "HSM_UNAVAILABLE", 1.0),
        (Kind.UNAVAILABLE, "COSIGNER_UNAVAILABLE", 1.0),
        (Kind.ABORTED, "WATCH_LAGGING", 1.0),
        (Kind.EXHAUSTED, "HSM_QUEUE_FULL", 1.0),
        (Kind.EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER", 1.0),
        (Kind.EXHAUSTED, "TOO_MANY_CHALLENGES", 5.0),
        (Kind.EXHAUSTED, "QUOTA_EXCEEDED", None),
        (Kind.DENIED, "WRONG_PIN", None),
        (Kind.DENIED, "KEY_LOCKED", None),
        (Kind.TIMEOUT, "STEP_TIMEOUT", None),
        (Kind.INVALID, "MALFORMED_REQUEST", None),
        (Kind.INTERNAL, "INTERNAL", None),
    ],
)
def test_the_status_carries_retry_info_exactly_when_the_table_says(
    kind: Kind, reason: str, delay: float | None
) -> None:
    assert status.retry_delay(kind, reason) == delay
    trailing = status.status_metadata(status.code_of(kind), reason, "refused", {"k": "v"})
    details = _details(trailing)
    assert details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
    assert status.reason_in(trailing) == reason
    assert dict(status.error_info_in(trailing).metadata) == {"k": "v"}
    if delay is None:
        assert len(details) == 1
    else:
        assert len(details) == 2
        assert details[1].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert status.retry_delay_in(trailing) == delay


def test_a_delay_keeps_its_fraction_of_a_second() -> None:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1500)
    detail = any_pb2.Any()
    detail.Pack(info)
    raw = status_pb2.Status(code=14, details=[detail]).SerializeToString()
    assert status.retry_delay_in((("grpc-status-details-bin", raw),)) == 1.5


def test_the_readers_answer_none_without_details() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )
    assert status.retry_delay_of(bare) is None
    assert status.reason_of(bare) is None
    assert status.retry_delay_in(None) is None


def test_the_sdk_keeps_the_delay_on_its_error() -> None:
    busy = ClientError.from_rpc(_failure(Kind.EXHAUSTED, "HSM_QUEUE_FULL"))
    assert (busy.reason, busy.kind, busy.retry_delay) == ("HSM_QUEUE_FULL", Kind.EXHAUSTED, 1.0)
    used_up = ClientError.from_rpc(_failure(Kind.EXHAUSTED, "QUOTA_EXCEEDED"))
    assert used_up.retry_delay is None
    assert ClientError("RECORD_MISMATCH", "the SDK's own").retry_delay is None


def test_every_reason_in_the_table_is_raised_with_its_kind() -> None:
    raised = {(kind, site.reason) for site in scan() for kind in site.kinds}
    for kind, reason in status.RETRY_DELAYS:
        if reason is not None:
            assert reason in REASONS
            assert (kind, reason) in raised, (kind, reason)


_SERVICE = "test.Errors"
#: What the test service refuses each request with.
_REFUSALS = {
    b"busy": Error(Kind.EXHAUSTED, "HSM_QUEUE_FULL", "the HSM queue is full"),
    b"down": Error(Kind.UNAVAILABLE, "RA_UNAVAILABLE", "the RA cannot be reached"),
    b"quota": Error(Kind.EXHAUSTED, "QUOTA_EXCEEDED", "the grant's quota is used up"),
    b"pin": Error(Kind.DENIED, "WRONG_PIN", "wrong PIN", {"attempts_left": "2"}),
}


class _Served:
    """The test server's channel, and the events of its held call: started, and released."""

    def __init__(self) -> None:
        self.channel: grpc.aio.Channel
        self.started = asyncio.Event()
        self.release = asyncio.Event()


@pytest.fixture
async def server() -> AsyncIterator[_Served]:
    """A real server on a free port with the services' interceptor (one call at a time per
    peer) around one method that refuses as :data:`_REFUSALS` says, or is held until released."""
    served = _Served()

    async def fail(request: bytes, context: Any) -> bytes:
        if request == b"hold":
            served.started.set()
            await served.release.wait()
            return b"done"
        raise _REFUSALS[request]

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Fail": grpc.unary_unary_rpc_method_handler(fail)}
    )
    interceptor = ServiceInterceptor(
        {_SERVICE: AccessPolicy({"Fail": ANYONE})}, 1024, max_rpcs_per_peer=1
    )
    grpc_server = grpc.aio.server(interceptors=[interceptor])
    grpc_server.add_generic_rpc_handlers((handler,))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        served.channel = channel
        yield served
    served.release.set()
    await grpc_server.stop(0)


def _fail(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{_SERVICE}/Fail"
    )
    return method


async def _refusal(channel: grpc.aio.Channel, request: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fail(channel)(request)
    return caught.value


@pytest.mark.parametrize(
    ("request_", "code", "reason", "delay"),
    [
        (b"busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "HSM_QUEUE_FULL", 1.0),
        (b"down", grpc.StatusCode.UNAVAILABLE, "RA_UNAVAILABLE", 1.0),
        (b"quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", None),
        (b"pin", grpc.StatusCode.PERMISSION_DENIED, "WRONG_PIN", None),
    ],
)
async def test_a_served_refusal_carries_retry_info_only_when_retryable(
    server: _Served, request_: bytes, code: grpc.StatusCode, reason: str, delay: float | None
) -> None:
    error = await _refusal(server.channel, request_)
    assert (error.code(), status.reason_of(error)) == (code, reason)
    assert status.retry_delay_of(error) == delay
    assert ClientError.from_rpc(error).retry_delay == delay
    if reason == "WRONG_PIN":
        assert dict(status.error_info(error).metadata) == {"attempts_left": "2"}


async def test_the_interceptors_own_limit_asks_to_retry(server: _Served) -> None:
    held = asyncio.ensure_future(_fail(server.channel)(b"hold"))
    try:
        await asyncio.wait_for(server.started.wait(), 10)
        error = await _refusal(server.channel, b"pin")
        assert (error.code(), status.reason_of(error)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_RPCS_FROM_PEER",
        )
        assert status.retry_delay_of(error) == 1.0
    finally:
        server.release.set()
        assert await held == b"done"
