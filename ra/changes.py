"""The RA's feed of changed answers (``RegistrationService.WatchChanges``), so that a gateway can
keep the RA's answers about keys and grants without serving one after it changed.

A change is published after it is stored and before the RA acknowledges it to the
administrator: :meth:`ChangeFeed.publish` returns once every watcher has acknowledged the change
(it dropped what it kept) or, for a watcher that has not within ``ack_seconds``, once that
watcher's stream is ended (a gateway whose watch ends stops using what it kept). Heartbeats
every ``heartbeat_seconds`` let a watcher tell a live feed from a stuck one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import grpc

from mobilesign.errors import Error, Kind
from mobilesign.hosting.interceptor import Malformed
from mobilesign.v1 import ra_pb2
from ra.errors import RaError

ACK_SECONDS = 1.0
HEARTBEAT_SECONDS = 1.0
#: Changes queued for one watcher before it counts as stuck (its stream is then ended).
MAX_QUEUED = 1024

_Context = grpc.aio.ServicerContext[Any, Any]


class _Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[ra_pb2.WatchChangesResponse] = asyncio.Queue(MAX_QUEUED)
        self.acknowledged = 0
        self.acked = asyncio.Condition()
        self.ended = asyncio.Event()
        self.lagging = False
        self.failure: Error | None = None  # the watcher's own fault that ended the watch

    def cut_off(self) -> None:
        """End this watch: it did not keep up."""
        self.lagging = True
        self.ended.set()


class ChangeFeed:
    """Watchers of the RA's answers and the changes sent to them."""

    def __init__(
        self, *, ack_seconds: float = ACK_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS
    ) -> None:
        self._ack_seconds = ack_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._sequence = 0
        self._watchers: set[_Watcher] = set()

    @property
    def watchers(self) -> int:
        """How many watches are open."""
        return len(self._watchers)

    async def publish(self, *, key_ids: Iterable[str] = (), grant_ids: Iterable[str] = ()) -> None:
        """Tell every watcher that the answers about ``key_ids`` and ``grant_ids`` changed, and
        wait until each has acknowledged it or has been cut off."""
        self._sequence += 1
        change = ra_pb2.WatchChangesResponse(
            sequence=self._sequence, key_ids=list(key_ids), grant_ids=list(grant_ids)
        )
        watchers = list(self._watchers)
        for watcher in watchers:
            try:
                watcher.queue.put_nowait(change)
            except asyncio.QueueFull:
                watcher.cut_off()
        await asyncio.gather(*(self._acknowledged(w, change.sequence) for w in watchers))

    async def _acknowledged(self, watcher: _Watcher, sequence: int) -> None:
        async def acked() -> None:
            async with watcher.acked:
                await watcher.acked.wait_for(
                    lambda: watcher.acknowledged >= sequence or watcher.ended.is_set()
                )

        try:
            await asyncio.wait_for(acked(), self._ack_seconds)
        except TimeoutError:
            watcher.cut_off()
        # Cut off here means the stream is being closed; the watcher drops what it kept when its
        # stream ends, so nothing it kept outlives this call by more than its own lease.

    async def serve(self, context: _Context) -> None:
        """Run one watch on a bidirectional stream until the caller or the feed ends it."""
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if isinstance(first, Malformed):
            raise first.error
        if not isinstance(first, ra_pb2.WatchChangesRequest) or first.acknowledged != 0:
            raise RaError(Kind.INVALID, "WATCH_OPEN_INVALID", "open a watch with acknowledged = 0")
        watcher = _Watcher()
        watcher.acknowledged = self._sequence
        self._watchers.add(watcher)
        try:
            await context.write(ra_pb2.WatchChangesResponse(sequence=self._sequence))
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read_acks(context, watcher))
                writer = group.create_task(self._write_changes(context, watcher))
                await watcher.ended.wait()
                reader.cancel()
                writer.cancel()
        finally:
            self._watchers.discard(watcher)
            watcher.ended.set()
            async with watcher.acked:
                watcher.acked.notify_all()
        if watcher.failure is not None:
            raise watcher.failure
        if watcher.lagging:
            raise RaError(
                Kind.ABORTED, "WATCH_LAGGING", "the watcher did not acknowledge a change in time"
            )

    async def _read_acks(self, context: _Context, watcher: _Watcher) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                if isinstance(request, Malformed):
                    watcher.failure = request.error
                    break
                assert isinstance(request, ra_pb2.WatchChangesRequest)
                if request.acknowledged > self._sequence:
                    watcher.failure = RaError(
                        Kind.INVALID, "WATCH_ACK_INVALID", "acknowledged a change not yet sent"
                    )
                    break
                async with watcher.acked:
                    watcher.acknowledged = max(watcher.acknowledged, request.acknowledged)
                    watcher.acked.notify_all()
        watcher.ended.set()

    async def _write_changes(self, context: _Context, watcher: _Watcher) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), self._heartbeat_seconds)
                except TimeoutError:
                    change = ra_pb2.WatchChangesResponse(sequence=watcher.acknowledged)
                await context.write(change)
        watcher.ended.set()
