"""The SDK's errors for a two-party stream that fails while the phone is sending: its own
reason, never grpc's internal failure to send presented as the cosigner's answer."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import client
from mobilesign.errors import Kind
from mobilesign.rpc.status import status_metadata


def _failure(code: grpc.StatusCode, reason: str | None, details: str) -> grpc.aio.AioRpcError:
    trailing = status_metadata(code, reason, details) if reason else ()
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


class _Call:
    """A stream call whose first write fails with ``error``."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error
        self.cancelled = False

    async def write(self, message: Any) -> None:
        raise self._error

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _Channel:
    """Just enough of ``grpc.aio.Channel`` for a generated stub to open one stream."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    def _open(self, *args: Any, **kwargs: Any) -> Any:
        return lambda *a, **k: self._call

    unary_unary = stream_stream = _open


async def _enrol_failing_with(error: grpc.aio.AioRpcError) -> client.ClientError:
    channel: Any = _Channel(_Call(error))
    with pytest.raises(client.ClientError) as caught:
        await client.enrol(channel, b"ticket", "123456")
    return caught.value


async def test_grpcs_failure_to_send_on_an_ended_stream_is_stream_ended() -> None:
    error = await _enrol_failing_with(
        _failure(grpc.StatusCode.INTERNAL, None, "Internal error from Core")
    )
    assert (error.reason, error.kind) == ("STREAM_ENDED", Kind.UNAVAILABLE)
    assert "Core" not in str(error)


async def test_the_cosigners_own_reason_is_kept() -> None:
    error = await _enrol_failing_with(
        _failure(grpc.StatusCode.PERMISSION_DENIED, "TICKET_USED", "the ticket was used")
    )
    assert (error.reason, error.kind) == ("TICKET_USED", Kind.DENIED)


async def test_an_internal_error_the_cosigner_reported_stays_internal() -> None:
    error = await _enrol_failing_with(
        _failure(grpc.StatusCode.INTERNAL, "STORAGE_FAILED", "could not store")
    )
    assert (error.reason, error.kind) == ("STORAGE_FAILED", Kind.INTERNAL)
