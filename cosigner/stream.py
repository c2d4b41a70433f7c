"""Reading protocol steps from a bidirectional stream: one timeout per step (a shorter one for the
first message, so that idle streams from strangers do not hold a slot), the expected step checked
before anything else looks at the message."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from cosigner.errors import CosignerError
from mobilesign.errors import Kind
from mobilesign.hosting.interceptor import Malformed

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class StepStream(Generic[Req, Resp]):
    """Explicit ``read()``/``write()`` over one RPC's stream, with a deadline per step.

    The first message must arrive within ``first_timeout`` seconds of the stream's start (a
    phone sends it at once; at most ``timeout``), every later one within ``timeout`` of the
    cosigner's wait."""

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], timeout: float, first_timeout: float
    ) -> None:
        self._context = context
        self._timeout = timeout
        self._first_timeout: float | None = first_timeout

    async def read(self, *expected: str) -> tuple[str, Req]:
        """The next message and its step (the ``oneof step`` case), which must be expected."""
        first, self._first_timeout = self._first_timeout, None
        # A first message never waits longer than a later step would.
        first = None if first is None else min(first, self._timeout)
        timeout = self._timeout if first is None else first
        try:
            # asyncio.timeout, not wait_for: no task per read (two reads per signature).
            async with asyncio.timeout(timeout):
                message = await self._context.read()
        except TimeoutError:
            if first is not None:
                raise CosignerError(
                    Kind.TIMEOUT,
                    "FIRST_MESSAGE_TIMEOUT",
                    f"no {' or '.join(expected)} step within {first:g} s of the stream's start",
                ) from None
            raise CosignerError(
                Kind.TIMEOUT,
                "STEP_TIMEOUT",
                f"no {' or '.join(expected)} step within {timeout:g} s",
            ) from None
        if message is grpc.aio.EOF:
            raise CosignerError(
                Kind.ABORTED,
                "STREAM_ENDED",
                f"the stream ended where a {' or '.join(expected)} step was expected",
            )
        if isinstance(message, Malformed):
            raise message.error
        assert isinstance(message, Message)
        step = message.WhichOneof("step")
        if step not in expected:
            raise CosignerError(
                Kind.PRECONDITION,
                "UNEXPECTED_STEP",
                f"expected step {' or '.join(expected)}, got {step or 'no step'}",
            )
        return step, message  # type: ignore[return-value]

    async def write(self, message: Resp) -> None:
        """Send one message."""
        await self._context.write(message)
