"""Every integer field of every request, at the edges of its width and beyond (2**63 and
2**64 - 1 do not fit SQLite's int64; negative int64 times; uint32 quotas and sizes as sent in a
64-bit varint), from a caller allowed to call the RPC: a refusal with a stable reason, never
INTERNAL or UNKNOWN, and the audit log unchanged.

The fields are found in the generated descriptors, so a new integer field is tested at once.
The requests are written in the wire format by hand: the generated classes refuse out-of-range
values before they are sent, and a hostile client does not use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from tests.fuzz.harness import methods, path_of
from tests.fuzz.messages import length_delimited, tag, varint
from tests.integration import escrow

pytestmark = pytest.mark.integration

_INTEGERS = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
)
EXTREMES = (2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63))
#: An identity each service lets call the RPC (the gateway's public RPCs: no certificate).
CALLERS = {
    "HsmService": ("hsm-proxy", "gateway"),
    "AdminService": ("ra", "admin"),
    "RegistrationService": ("ra", "admin"),
    "GatewayService": ("gateway", "public"),
    "CosignerService": ("cosigner", "public"),
}


def _integer_paths(
    message: Descriptor, prefix: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    for fd in message.fields:
        if fd.type in _INTEGERS:
            yield (*prefix, fd)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type and len(prefix) < 3:
            yield from _integer_paths(fd.message_type, (*prefix, fd))


def _encode(path: tuple[FieldDescriptor, ...], value: int) -> bytes:
    *parents, leaf = path
    data = tag(leaf.number, 0) + varint(value)
    for parent in reversed(parents):
        data = length_delimited(parent.number, data)
    return data


CASES = [
    pytest.param(
        service,
        method,
        path,
        id=f"{method.name}.{'.'.join(fd.name for fd in path)}",
    )
    for service, method in methods()
    for path in _integer_paths(method.input_type)
]


def test_the_known_integer_fields_are_covered() -> None:
    ids = {case.id for case in CASES}
    assert {
        "GetLogEntry.entry_index",
        "GetInclusionProof.tree_size",
        "GetConsistencyProof.new_size",
        "SignCheckpoint.tree_size",
        "SignDigest.authorisation.entry_index",
        "CreateGrant.not_after_unix",
        "CreateGrant.quota_daily",
        "IssueEnrolmentTicket.ttl_seconds",
        "KeyGen.start.commitment.identifier",
    } <= ids


@pytest.fixture(scope="module")
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared four services."""
    return certificates_deployment


async def _refusal(
    channel: grpc.aio.Channel, rpc: str, streaming: bool, request: bytes
) -> grpc.aio.AioRpcError | None:
    """The error the RPC answers ``request`` with, or None when it accepts it."""
    try:
        if streaming:
            call: Any = channel.stream_stream(rpc, None, None)(timeout=20)
            await call.write(request)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        else:
            unary: Any = channel.unary_unary(rpc, None, None)
            await unary(request, timeout=20)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


@pytest.mark.parametrize(("service", "method", "path"), CASES)
async def test_integer_field_extremes(
    deployment: Deployment,
    service: ServiceDescriptor,
    method: MethodDescriptor,
    path: tuple[FieldDescriptor, ...],
) -> None:
    host, caller = CALLERS[service.name]
    channel = (
        deployment.public_channel(host) if caller == "public" else deployment.channel(host, caller)
    )
    size = await escrow.log_size(deployment)
    async with channel:
        for value in EXTREMES:
            error = await _refusal(
                channel, path_of(service, method), method.client_streaming, _encode(path, value)
            )
            if error is None:
                continue  # accepted (the value is ignored or meaningful): nothing refused
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                value,
                error.details(),
            )
            assert reason_of(error), (value, error.code(), error.details())
    assert await escrow.log_size(deployment) == size
