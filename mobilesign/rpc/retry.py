"""One more try for a call its callee may repeat, when the callee was unreachable.

A service that restarts is serving again well before every caller's channel has reconnected;
a call made in between fails at once with UNAVAILABLE. For calls whose repetition cannot change
the outcome (reads, and writes the callee makes idempotent) one retry after about the channels'
shortest reconnection back-off (``channels.RECONNECT_OPTIONS``) hides that gap. Calls that act
(an organisation-key use, a share released) are never retried this way: the caller cannot tell
whether an unreachable callee acted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

T = TypeVar("T")
#: Pause before the retry.
PAUSE_SECONDS = 0.15


async def idempotent(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, and once more after :data:`PAUSE_SECONDS` if it failed UNAVAILABLE; any
    failure of the last try propagates as it came."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
    await asyncio.sleep(PAUSE_SECONDS)
    return await call()
