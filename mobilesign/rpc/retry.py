"""A few more tries for a call its callee may repeat, when the callee was unreachable.

A service that restarts is serving again well before every caller's channel has reconnected;
a call made in between fails at once with UNAVAILABLE. For calls whose repetition cannot change
the outcome (reads, and writes the callee makes idempotent) retries spread over a little more
than the channels' longest reconnection back-off (``channels.RECONNECT_OPTIONS``: 250 ms, plus
gRPC's 20% jitter) hide that gap; a single retry could land while the channel still waits out
its back-off. Calls that act (an organisation-key use, a share released) are never retried this
way: the caller cannot tell whether an unreachable callee acted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

T = TypeVar("T")
#: Pause before each retry.
PAUSE_SECONDS = 0.15
#: Tries in all: the retries span 0.45 s, more than the longest back-off (0.3 s with jitter).
TRIES = 4


async def idempotent(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, tried again after :data:`PAUSE_SECONDS` while it fails UNAVAILABLE, up to
    :data:`TRIES` tries; any other failure, and the last try's, propagates as it came."""
    for _ in range(TRIES - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(PAUSE_SECONDS)
    return await call()
