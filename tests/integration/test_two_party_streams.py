"""Both cosigner streams (KeyGen and Sign): unparseable steps and silent phones end the stream
with a stable reason and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

import client
from client.keystore import Keystore
from mobilesign import twoparty
from mobilesign.errors import Kind
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc
from tests.conftest import TWO_PARTY_STEP_TIMEOUT_SECONDS
from tests.integration.two_party import (
    PIN,
    SCHEME,
    Code,
    cosigner_stub,
    enrols_afterwards,
    expect_status,
    get_key,
    keygen_start,
    new_device_key,
    new_ticket,
    next_step,
    session_proof,
    signings,
    until_ready,
    until_secret_share,
    verifier_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def test_unparseable_step_is_refused(deployment: Deployment, keystore: Keystore) -> None:
    user_id, ticket = await new_ticket(deployment)
    garbage = b"\xff\xff\xff"  # a truncated varint: not a protobuf message at all
    async with deployment.public_channel("cosigner") as channel:

        def raw(method: str, response: Callable[[bytes], Message]) -> Any:
            """A stream that sends bytes as they are."""
            path = f"/mobilesign.v1.CosignerService/{method}"
            return channel.stream_stream(path, response_deserializer=response)()

        for method, response in (
            ("KeyGen", pb.KeyGenResponse.FromString),
            ("Sign", pb.SignResponse.FromString),
        ):
            call = raw(method, response)
            await call.write(garbage)
            await expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")

        # Mid-protocol: after the cosigner's commitment, and inside an open session.
        call = raw("KeyGen", pb.KeyGenResponse.FromString)
        start = keygen_start(ticket, twoparty.PhoneKeyGen(), new_device_key())
        await call.write(pb.KeyGenRequest(start=start).SerializeToString())
        await next_step(call, "commitment")
        await call.write(garbage)
        await expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")

        call = raw("Sign", pb.SignResponse.FromString)
        open_ = pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id))
        await call.write(open_.SerializeToString())
        challenge = (await next_step(call, "challenge")).challenge.challenge
        proof = session_proof(keystore, challenge, verifier_for(keystore), keystore.device_key)
        await call.write(proof.SerializeToString())
        await next_step(call, "ready")
        await call.write(garbage)
        await expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert (await get_key(deployment, keystore.key_id)).failed_pin_attempts == 0
    assert signings(deployment, keystore.key_id) == []
    await enrols_afterwards(deployment, user_id, ticket)


async def test_silent_phones_time_out(deployment: Deployment, keystore: Keystore) -> None:
    user_id, ticket = await new_ticket(deployment)
    verifier = verifier_for(keystore)
    timeout = TWO_PARTY_STEP_TIMEOUT_SECONDS

    async def silent(
        call: grpc.aio.StreamStreamCall[Any, Any], reason: str = "STEP_TIMEOUT"
    ) -> None:
        started = time.monotonic()
        await expect_status(call, Code.DEADLINE_EXCEEDED, reason)
        assert timeout - 0.5 <= time.monotonic() - started <= timeout + 5

    async def before_start(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        # The first-message timeout (5 s) is capped by the step timeout (3 s here).
        await silent(stub.KeyGen(), "FIRST_MESSAGE_TIMEOUT")

    async def after_commitment(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        call = stub.KeyGen()
        await until_secret_share(call, ticket, twoparty.PhoneKeyGen(), new_device_key())
        await silent(call)

    async def in_session(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        call = stub.Sign()
        await until_ready(call, keystore, verifier)
        await silent(call)

    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        await asyncio.gather(before_start(stub), after_commitment(stub), in_session(stub))
    await enrols_afterwards(deployment, user_id, ticket)


async def test_the_sdk_reports_a_session_the_cosigner_ended(
    deployment: Deployment, keystore: Keystore
) -> None:
    """Idle past the step timeout, the cosigner ends the session: the SDK answers with the
    cosigner's reason (not a bare TypeError), and the session then says it is closed."""
    async with deployment.public_channel("cosigner") as channel:
        session = client.SigningSession(channel, keystore, PIN)
        await session.open()
        await session.sign(b"before the pause")
        await asyncio.sleep(TWO_PARTY_STEP_TIMEOUT_SECONDS + 1.5)
        with pytest.raises(client.ClientError) as info:
            await session.sign(b"after the pause")
        assert (info.value.reason, info.value.kind) == ("STEP_TIMEOUT", Kind.TIMEOUT)
        with pytest.raises(client.ClientError) as info:
            await session.sign(b"once more")
        assert info.value.reason == "SESSION_NOT_OPEN"
        assert await session.close() == 0
        # A new session on the same key works.
        async with client.SigningSession(channel, keystore, PIN) as again:
            assert len(await again.sign(b"in a new session")) == 64


async def test_closing_a_session_the_cosigner_ended(
    deployment: Deployment, keystore: Keystore
) -> None:
    async with deployment.public_channel("cosigner") as channel:
        session = client.SigningSession(channel, keystore, PIN)
        await session.open()
        await asyncio.sleep(TWO_PARTY_STEP_TIMEOUT_SECONDS + 1.5)
        with pytest.raises(client.ClientError) as info:
            await session.close()
        assert info.value.reason == "STEP_TIMEOUT"
        assert await session.close() == 0


def _log_lines(deployment: Deployment, request_id: str) -> list[dict[str, Any]]:
    log = deployment.services["cosigner"].log
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("request_id") == request_id]


@pytest.mark.parametrize("misbehaviour", ["write after close", "cancel mid-session"])
async def test_a_client_misbehaving_is_never_an_internal_error(
    deployment: Deployment, keystore: Keystore, misbehaviour: str
) -> None:
    request_id = f"misbehaving-{secrets.token_hex(4)}"
    verifier = verifier_for(keystore)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign(metadata=(("x-request-id", request_id),))
        await until_ready(call, keystore, verifier)
        if misbehaviour == "write after close":
            await call.write(pb.SignRequest(close=pb.SignClose()))
            await call.write(pb.SignRequest(close=pb.SignClose()))
            await next_step(call, "closed")
            # The client's own view of the call may now be "Internal error from Core" (grpc's
            # answer to writing on a finished stream); what counts is the cosigner's answer.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(pb.SignRequest(close=pb.SignClose()))
        else:
            call.cancel()
        await asyncio.sleep(1.0)
    lines = _log_lines(deployment, request_id)
    assert [line for line in lines if line["level"] == "error"] == []
    (rpc,) = [line for line in lines if line["msg"] == "rpc"]
    assert rpc["code"] != "INTERNAL"
    if misbehaviour == "write after close":
        assert rpc["code"] == "OK"
