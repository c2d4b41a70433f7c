"""Strangers on the public edge cannot deny service (real processes): idle ``Sign`` streams past
the cosigner's public limit leave its internal listener to the gateway and are ended after the
first-message timeout; one address gets only its share of streams (health and reflection
included); unary calls that never send their request are counted and ended too; and
``StartSession`` for random keys costs the gateway nothing, so real users log in at once, while
replayed, forged, altered and expired challenges are refused, and one used before a restart
after it too (the challenge key is a file, the used challenges are in the gateway database).

Every call of a plain channel here comes from 127.0.0.1. To be many peers, as a flood from many
machines would be, streams go through :class:`Relay`, a local TCP relay whose outgoing
connections leave from another loopback address (all of 127.0.0.0/8 is local on Linux); TLS is
end to end, the relay only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import client
from mobilesign import deviceauth
from mobilesign.hosting import devpki
from mobilesign.rpc import channels
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2_grpc, gateway_pb2
from tests.integration import escrow, two_party

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
#: The cosigner's public listener takes this many calls at a time (its internal one, 1024).
PUBLIC_LIMIT = 600
#: More than PUBLIC_LIMIT, and more than the internal limit too: with one shared limit, as
#: before, the flood alone would fill the internal listener.
FLOOD = 1_100
PER_PEER = 32
FIRST_MESSAGE_TIMEOUT = 5.0
CHALLENGE_SECONDS = 3
GATEWAY_FIRST_MESSAGE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services; the cosigner's public limit below the flood, short login challenges."""
    deployment = Deployment(
        tmp_path_factory.mktemp("public-edge"),
        extra_env={
            "MOBILESIGN_COSIGNER_PUBLIC_MAX_CONCURRENT_RPCS": str(PUBLIC_LIMIT),
            "MOBILESIGN_COSIGNER_PUBLIC_MAX_RPCS_PER_PEER": str(PER_PEER),
            "MOBILESIGN_COSIGNER_FIRST_MESSAGE_TIMEOUT_SECONDS": str(FIRST_MESSAGE_TIMEOUT),
            "MOBILESIGN_GATEWAY_SESSION_CHALLENGE_SECONDS": str(CHALLENGE_SECONDS),
            "MOBILESIGN_GATEWAY_FIRST_MESSAGE_TIMEOUT_SECONDS": str(GATEWAY_FIRST_MESSAGE_TIMEOUT),
        },
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def organisation(deployment: Deployment) -> escrow.Organisation:
    """The organisation the phones are certified for."""
    return await escrow.organisation(deployment)


@pytest_asyncio.fixture
async def phone(
    deployment: Deployment, organisation: escrow.Organisation
) -> AsyncIterator[escrow.Phone]:
    """An enrolled, certified, logged-in phone (set up before any flood)."""
    phone = await escrow.phone(deployment, organisation, "edge")
    yield phone
    await phone.close()


class Relay:
    """Accepts TCP connections on 127.0.0.1 and relays each to ``target`` from ``source``."""

    def __init__(self, target: str, source: str) -> None:
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self._source = source
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self._host, self._port, local_addr=(self._source, 0)
        )
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def peer_channels(
    deployment: Deployment, sources: Sequence[str], name: str = "cosigner"
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """One channel to the public listener of ``name`` from each source address."""
    ca = (devpki.ensure(deployment.state_dir) / "ca.pem").read_bytes()
    target = deployment.address(name, "public")
    relays = [await Relay(target, source).start() for source in sources]
    opened = [channels.server_tls(relay.address, ca) for relay in relays]
    try:
        yield opened
    finally:
        for channel in opened:
            await channel.close()
        for relay in relays:
            await relay.close()


@contextlib.asynccontextmanager
async def peers(deployment: Deployment, sources: Sequence[str]) -> AsyncIterator[list[Any]]:
    """A cosigner stub on the public listener from each source address."""
    async with peer_channels(deployment, sources) as opened:
        yield [cosigner_pb2_grpc.CosignerServiceStub(channel) for channel in opened]


async def admitted(call: grpc.aio.StreamStreamCall[Any, Any]) -> bool:
    """Whether the cosigner's handler took the stream (it sends its headers at once)."""
    metadata = await call.initial_metadata()
    return any(key == "x-request-id" for key, _ in metadata or ())


async def ending(call: grpc.aio.StreamStreamCall[Any, Any]) -> tuple[Code, str | None]:
    """How a stream on which nothing is sent ends: its code and reason."""
    try:
        response = await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), reason_of(exc)
    pytest.fail(f"an idle stream got {response!r}")


async def signs(deployment: Deployment, phone: escrow.Phone) -> None:
    """The phone opens a new signing session and gets a verifiable signature."""
    message = b"signed after the flood " + secrets.token_bytes(8)
    async with (
        deployment.public_channel("cosigner") as channel,
        client.SigningSession(channel, phone.keystore, escrow.PIN) as session,
    ):
        signature = await session.sign(message)
    two_party.verify_signature(phone.keystore, message, signature)


async def test_idle_streams_past_the_public_limit_leave_the_internal_listener_alone(
    deployment: Deployment, phone: escrow.Phone
) -> None:
    per_address = PER_PEER - 2
    sources = [f"127.0.0.{2 + i}" for i in range(-(-FLOOD // per_address))]
    async with peers(deployment, sources) as stubs:
        calls = [stub.Sign() for stub in stubs for _ in range(per_address)][:FLOOD]
        taken = await asyncio.gather(*(admitted(call) for call in calls))
        held = [call for call, ok in zip(calls, taken, strict=True) if ok]
        refused = [call for call, ok in zip(calls, taken, strict=True) if not ok]
        # Meanwhile the gateway's internal calls to the cosigner go through: a login asks the
        # cosigner's internal GetKey; and so does an administrator's own GetKey.
        await phone.gateway.login()
        assert (await two_party.get_key(deployment, phone.keystore.key_id)).user_id
        assert not any(call.done() for call in held), "the flood was still there"
        # The public listener is full: grpc refused the calls past its limit (a few fewer were
        # taken, as calls refused a moment earlier still count while they are answered).
        assert len(held) <= PUBLIC_LIMIT
        assert len(refused) >= FLOOD - PUBLIC_LIMIT
        codes = [await call.code() for call in refused]
        # grpc's own limiter answers; now and then it cancels one call instead of refusing it.
        assert set(codes) <= {Code.RESOURCE_EXHAUSTED, Code.CANCELLED}
        assert codes.count(Code.RESOURCE_EXHAUSTED) >= FLOOD - PUBLIC_LIMIT - 5
        # Idle streams are ended after the first-message timeout (the step timeout is 30 s).
        endings = await asyncio.wait_for(
            asyncio.gather(*(ending(call) for call in held)), FIRST_MESSAGE_TIMEOUT + 15
        )
        assert set(endings) == {(Code.DEADLINE_EXCEEDED, "FIRST_MESSAGE_TIMEOUT")}
    await signs(deployment, phone)


async def test_one_address_gets_its_share_of_streams_whatever_its_ports(
    deployment: Deployment, phone: escrow.Phone
) -> None:
    # Two channels (two connections, two source ports) from one address.
    async with peer_channels(deployment, ["127.0.0.200", "127.0.0.200"]) as opened:
        stubs = [cosigner_pb2_grpc.CosignerServiceStub(channel) for channel in opened]
        calls = [stub.Sign() for stub in stubs for _ in range(PER_PEER // 2 + 4)]
        taken = await asyncio.gather(*(admitted(call) for call in calls))
        assert sum(taken) == PER_PEER
        refused = [call for call, ok in zip(calls, taken, strict=True) if not ok]
        assert len(refused) == 8
        for call in refused:
            assert await ending(call) == (Code.RESOURCE_EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER")
        # Health and reflection count too, or their streams would be a way round the cap.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(opened[0]).Check(health_pb2.HealthCheckRequest())
        assert (info.value.code(), reason_of(info.value)) == (
            Code.RESOURCE_EXHAUSTED,
            "TOO_MANY_RPCS_FROM_PEER",
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(opened[1]).ServerReflectionInfo()
        assert await ending(reflection) == (Code.RESOURCE_EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER")
        # Another address (the phone's) is not affected, and signs.
        await signs(deployment, phone)
        for call in calls:
            call.cancel()
    # Once its streams end, the address gets streams again.
    async with peers(deployment, ["127.0.0.200"]) as (stub,):
        call = stub.Sign()
        assert await admitted(call)
        call.cancel()


async def test_unary_calls_that_never_send_their_request_are_counted_and_ended(
    deployment: Deployment,
) -> None:
    # grpc would wait for a unary request for ever, before any handler sees the call: such
    # calls would hold the public listener's places, beyond any per-address cap.
    async with peer_channels(deployment, ["127.0.0.201", "127.0.0.202"], "gateway") as opened:
        start_session: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = opened[0].stream_stream(
            "/mobilesign.v1.GatewayService/StartSession"
        )
        calls = [start_session() for _ in range(PER_PEER + 4)]
        check: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = opened[1].stream_stream(
            "/grpc.health.v1.Health/Check"
        )
        health = check()
        taken = await asyncio.wait_for(
            asyncio.gather(*(admitted(call) for call in calls)), GATEWAY_FIRST_MESSAGE_TIMEOUT
        )
        assert sum(taken) == PER_PEER
        began = time.monotonic()
        endings = await asyncio.wait_for(
            asyncio.gather(*(ending(call) for call in [*calls, health])),
            GATEWAY_FIRST_MESSAGE_TIMEOUT + 10,
        )
        assert time.monotonic() - began <= GATEWAY_FIRST_MESSAGE_TIMEOUT + 5
    assert Counter(endings) == {
        (Code.DEADLINE_EXCEEDED, "FIRST_MESSAGE_TIMEOUT"): PER_PEER + 1,
        (Code.RESOURCE_EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER"): 4,
    }


@pytest.mark.parametrize("name", ["cosigner", "gateway"])
async def test_health_and_reflection_on_the_public_listener(
    deployment: Deployment, name: str
) -> None:
    # The public listener is its own server: it serves health and reflection as well.
    async with deployment.public_channel(name) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        listed = {s.name for s in reply.list_services_response.service}
        assert "grpc.health.v1.Health" in listed
        assert any(s.startswith("mobilesign.v1.") for s in listed)


# Login challenges ---------------------------------------------------------------------------


async def start(gateway: Any, key_id: str) -> bytes:
    reply = await gateway.StartSession(gateway_pb2.StartSessionRequest(key_id=key_id), timeout=10)
    return bytes(reply.challenge)


async def finish(
    gateway: Any, phone: escrow.Phone, challenge: bytes, key_id: str | None = None
) -> gateway_pb2.FinishSessionResponse:
    """FinishSession with the phone's device key's answer to ``challenge``."""
    key_id = key_id or phone.keystore.key_id
    transcript = deviceauth.gateway_session_transcript(bytes.fromhex(key_id), challenge)
    reply: gateway_pb2.FinishSessionResponse = await gateway.FinishSession(
        gateway_pb2.FinishSessionRequest(
            key_id=key_id,
            challenge=challenge,
            device_signature=deviceauth.sign(phone.keystore.device_key, transcript),
        ),
        timeout=10,
    )
    return reply


async def refused_login(gateway: Any, phone: escrow.Phone, challenge: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await finish(gateway, phone, challenge)
    assert (info.value.code(), reason_of(info.value)) == (Code.UNAUTHENTICATED, "CHALLENGE_INVALID")


async def test_start_session_for_random_keys_leaves_real_logins_alone(
    deployment: Deployment, phone: escrow.Phone
) -> None:
    issued = 0
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)

        async def flood(count: int) -> None:
            nonlocal issued
            for _ in range(count):
                assert len(await start(gateway, secrets.token_hex(32))) == 32
                issued += 1

        # Within the gateway's per-address cap (32 calls at a time).
        workers = 25
        await asyncio.gather(*(flood(10_000 // workers) for _ in range(workers)))
        assert issued == 10_000
        # A real user logs in at once, through the SDK and by hand.
        began = time.monotonic()
        await phone.gateway.login()
        assert time.monotonic() - began < 5
        assert await phone.gateway.grants() == []
        challenge = await start(gateway, phone.keystore.key_id)
        assert (await finish(gateway, phone, challenge)).session_token
        # Replayed after the successful login.
        await refused_login(gateway, phone, challenge)


async def test_forged_altered_expired_and_used_challenges_are_refused_also_after_a_restart(
    deployment: Deployment, phone: escrow.Phone
) -> None:
    key_id = phone.keystore.key_id
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        challenge = await start(gateway, key_id)
        # Forged, altered in each part (stamp, random, MAC), another key's challenge: all
        # answered by the right device key over the bytes sent.
        await refused_login(gateway, phone, secrets.token_bytes(32))
        for index in (0, 7, 8, 15, 16, 31):
            altered = bytearray(challenge)
            altered[index] ^= 0x80
            await refused_login(gateway, phone, bytes(altered))
        await refused_login(gateway, phone, await start(gateway, secrets.token_hex(32)))
        # A wrong answer does not use a challenge up (a stranger cannot spoil a login) ...
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway.FinishSession(
                gateway_pb2.FinishSessionRequest(
                    key_id=key_id, challenge=challenge, device_signature=b"\x30\x00"
                )
            )
        assert reason_of(info.value) == "DEVICE_PROOF_INVALID"
        # ... and the refusals above did not either: the original still logs in, once.
        assert (await finish(gateway, phone, challenge)).session_token
        await refused_login(gateway, phone, challenge)
        # Expired.
        old = await start(gateway, key_id)
        await asyncio.sleep(CHALLENGE_SECONDS + 0.5)
        await refused_login(gateway, phone, old)
        outstanding = await start(gateway, key_id)
    # A restart keeps the challenge key (an owner-only file) and the challenges used: the one
    # outstanding logs in once, the one used before is still refused.
    key_file = deployment.state_dir / "gateway" / "challenge.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_bytes()
    deployment.stop("gateway")
    deployment.start("gateway")
    assert key_file.read_bytes() == key
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        await refused_login(gateway, phone, challenge)
        assert (await finish(gateway, phone, outstanding)).session_token
        await refused_login(gateway, phone, outstanding)
