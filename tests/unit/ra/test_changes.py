"""The RA's change feed: what a watcher is sent, when a publication returns, and how a watch
that misbehaves or lags ends."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mobilesign.errors import Error
from mobilesign.hosting.interceptor import Malformed
from mobilesign.rpc.wire import malformed_request
from mobilesign.v1 import ra_pb2
from ra.changes import ChangeFeed
from ra.errors import RaError


class _Context:
    """The two ends of one watch stream, in memory."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Any] = asyncio.Queue()
        self.outgoing: asyncio.Queue[ra_pb2.WatchChangesResponse] = asyncio.Queue()

    async def read(self) -> Any:
        return await self.incoming.get()

    async def write(self, message: ra_pb2.WatchChangesResponse) -> None:
        await self.outgoing.put(message)

    def send(self, acknowledged: int) -> None:
        self.incoming.put_nowait(ra_pb2.WatchChangesRequest(acknowledged=acknowledged))

    async def next_change(self) -> ra_pb2.WatchChangesResponse:
        while True:
            message = await asyncio.wait_for(self.outgoing.get(), 2)
            if message.key_ids or message.grant_ids:
                return message


async def _watching(feed: ChangeFeed) -> tuple[_Context, asyncio.Task[None]]:
    context = _Context()
    context.send(0)
    task = asyncio.create_task(feed.serve(context))  # type: ignore[arg-type]
    opened = await asyncio.wait_for(context.outgoing.get(), 2)
    assert opened.sequence == 0
    assert not opened.key_ids
    return context, task


async def test_publishing_without_watchers_returns_at_once() -> None:
    await asyncio.wait_for(ChangeFeed().publish(key_ids=["k"]), 0.5)


async def test_a_publication_returns_once_the_watcher_acknowledged_it() -> None:
    feed = ChangeFeed(ack_seconds=5)
    context, task = await _watching(feed)
    publication = asyncio.create_task(feed.publish(key_ids=["k1"], grant_ids=["g1"]))
    change = await context.next_change()
    assert (list(change.key_ids), list(change.grant_ids), change.sequence) == (["k1"], ["g1"], 1)
    await asyncio.sleep(0.05)
    assert not publication.done()  # not before the acknowledgement
    context.send(change.sequence)
    await asyncio.wait_for(publication, 1)
    assert feed.watchers == 1
    context.incoming.put_nowait(grpc.aio.EOF)  # the watcher leaves: the watch ends quietly
    await asyncio.wait_for(task, 1)
    assert feed.watchers == 0


async def test_a_watcher_that_does_not_acknowledge_is_cut_off() -> None:
    feed = ChangeFeed(ack_seconds=0.1)
    _context, task = await _watching(feed)
    await asyncio.wait_for(feed.publish(key_ids=["k1"]), 1)
    with pytest.raises(RaError) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.reason == "WATCH_LAGGING"
    assert feed.watchers == 0


async def test_an_idle_feed_sends_heartbeats() -> None:
    feed = ChangeFeed(heartbeat_seconds=0.02)
    context, task = await _watching(feed)
    beats = [await asyncio.wait_for(context.outgoing.get(), 1) for _ in range(3)]
    assert all(not b.key_ids and not b.grant_ids for b in beats)
    task.cancel()


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (ra_pb2.WatchChangesRequest(acknowledged=7), "WATCH_OPEN_INVALID"),
        (Malformed(malformed_request()), "MALFORMED_REQUEST"),
    ],
)
async def test_a_watch_opened_wrongly_is_refused(first: Any, reason: str) -> None:
    feed = ChangeFeed()
    context = _Context()
    context.incoming.put_nowait(first)
    with pytest.raises(Error) as caught:
        await feed.serve(context)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    assert feed.watchers == 0


@pytest.mark.parametrize(
    ("later", "reason"),
    [
        (ra_pb2.WatchChangesRequest(acknowledged=99), "WATCH_ACK_INVALID"),
        (Malformed(malformed_request()), "MALFORMED_REQUEST"),
    ],
)
async def test_a_bad_acknowledgement_ends_the_watch_with_its_reason(
    later: Any, reason: str
) -> None:
    feed = ChangeFeed()
    context, task = await _watching(feed)
    context.incoming.put_nowait(later)
    with pytest.raises(Error) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.reason == reason
    assert feed.watchers == 0
