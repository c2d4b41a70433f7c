"""The RA's answers the gateway keeps: used only while the RA's change feed is live, dropped by
every change before the RA's publication returns, never kept when a change crossed them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from ra.changes import ChangeFeed
from server.errors import GatewayError
from server.ra_cache import CachedRegistry

KEY = "ab" * 32
GRANT = "g" + "0" * 31


class _Ra(ra_pb2_grpc.RegistrationServiceServicer):
    """The RA's answers about one key and one grant, counted; the real change feed."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self.asked: Counter[str] = Counter()
        self.serial = "01"
        self.revoked = False
        self.hold: asyncio.Event | None = None  # answers wait for it when set
        self.was_asked = asyncio.Event()

    async def _answering(self, what: str) -> None:
        self.asked[what] += 1
        self.was_asked.set()
        if self.hold is not None:
            await self.hold.wait()

    async def GetKeyStatus(self, request: Any, context: Any) -> ra_pb2.GetKeyStatusResponse:
        await self._answering("status")
        revoked = self.revoked
        return ra_pb2.GetKeyStatusResponse(
            certificate_serial=self.serial, certificate=b"der", revoked=revoked
        )

    async def GetGrant(self, request: Any, context: Any) -> ra_pb2.GetGrantResponse:
        await self._answering("grant")
        if request.grant_id != GRANT:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such grant")
        return ra_pb2.GetGrantResponse(
            grant=gateway_pb2.Grant(grant_id=GRANT, revoked=self.revoked)
        )

    async def WatchChanges(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self.feed.serve(context)


@pytest.fixture
async def ra() -> AsyncIterator[tuple[_Ra, grpc.aio.Server, int]]:
    # Only the RPCs the gateway's cache uses; the others answer UNIMPLEMENTED.
    servicer = _Ra(ChangeFeed(ack_seconds=1, heartbeat_seconds=0.05))  # type: ignore[abstract]
    server = grpc.aio.server()
    ra_pb2_grpc.add_RegistrationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, server, port
    await server.stop(0)


async def _live(registry: CachedRegistry) -> asyncio.Task[None]:
    task = asyncio.create_task(registry.watch())
    for _ in range(200):
        if registry.live:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the watch did not open")


async def test_answers_are_kept_while_the_feed_is_live_and_dropped_by_a_change(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    servicer, _, port = ra
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel)
        watch = await _live(registry)
        for _ in range(3):
            assert not (await registry.key_status(KEY)).revoked
            assert not (await registry.grant(GRANT)).revoked  # type: ignore[union-attr]
        assert servicer.asked == {"status": 1, "grant": 1}
        servicer.revoked = True
        await servicer.feed.publish(key_ids=[KEY], grant_ids=[GRANT])
        # The publication returned: the gateway has already dropped both answers.
        assert (await registry.key_status(KEY)).revoked
        assert (await registry.grant(GRANT)).revoked  # type: ignore[union-attr]
        assert servicer.asked == {"status": 2, "grant": 2}
        watch.cancel()


async def test_what_cannot_change_without_a_publication_is_not_kept(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    servicer, _, port = ra
    servicer.serial = ""  # no certificate yet: the next answer may be a new one
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel)
        watch = await _live(registry)
        for _ in range(2):
            await registry.key_status(KEY)
            assert await registry.grant("g" + "1" * 31) is None
        assert servicer.asked == {"status": 2, "grant": 2}
        watch.cancel()


async def test_nothing_is_kept_without_a_live_feed(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    servicer, _, port = ra
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel)  # no watch running
        for _ in range(2):
            await registry.key_status(KEY)
        assert servicer.asked["status"] == 2


async def test_a_feed_that_falls_silent_stops_the_kept_answers(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    servicer, _, port = ra
    servicer.feed = ChangeFeed(heartbeat_seconds=60)  # the RA's heartbeats stop
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel, lease_seconds=0.2)
        watch = await _live(registry)
        await registry.key_status(KEY)
        await registry.key_status(KEY)
        assert servicer.asked["status"] == 1
        await asyncio.sleep(0.3)  # past the lease with nothing heard
        assert not registry.live
        await registry.key_status(KEY)
        assert servicer.asked["status"] == 2
        watch.cancel()


async def test_an_answer_crossed_by_a_change_is_not_kept(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    servicer, _, port = ra
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel)
        watch = await _live(registry)
        servicer.hold = asyncio.Event()
        asking = asyncio.create_task(registry.key_status(KEY))  # answered as "not revoked"
        await asyncio.wait_for(servicer.was_asked.wait(), 2)
        servicer.revoked = True
        await servicer.feed.publish(key_ids=[KEY])
        servicer.revoked = False  # what the answer in flight says
        servicer.hold.set()
        await asyncio.wait_for(asking, 2)
        servicer.revoked = True
        assert (await registry.key_status(KEY)).revoked  # asked again, not the crossed answer
        assert servicer.asked["status"] == 2
        watch.cancel()


async def test_when_the_ra_goes_away_the_gateway_asks_it_and_says_it_is_unreachable(
    ra: tuple[_Ra, grpc.aio.Server, int],
) -> None:
    _servicer, server, port = ra
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        registry = CachedRegistry(channel)
        watch = await _live(registry)
        await registry.key_status(KEY)
        await server.stop(0)
        for _ in range(200):
            if not registry.live:
                break
            await asyncio.sleep(0.01)
        assert not registry.live
        assert registry.kept == 0
        with pytest.raises(GatewayError) as caught:
            await registry.key_status(KEY)
        assert caught.value.reason == "RA_UNAVAILABLE"
        watch.cancel()
