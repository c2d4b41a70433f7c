"""A few retries, with pauses, for an idempotent call whose callee was unreachable; no retry
for any other failure."""

from __future__ import annotations

import grpc
import pytest

from mobilesign.rpc import retry
from mobilesign.rpc.channels import RECONNECT_OPTIONS


def _failure(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata())


class _Callee:
    def __init__(self, *failures: grpc.StatusCode) -> None:
        self._failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self._failures:
            raise _failure(self._failures.pop(0))
        return "answer"


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without their pauses."""
    monkeypatch.setattr(retry, "PAUSE_SECONDS", 0.0)


@pytest.mark.usefixtures("no_pause")
async def test_unavailable_is_retried_until_it_answers() -> None:
    callee = _Callee(*[grpc.StatusCode.UNAVAILABLE] * (retry.TRIES - 1))
    assert await retry.idempotent(callee) == "answer"
    assert callee.calls == retry.TRIES


@pytest.mark.usefixtures("no_pause")
async def test_unavailable_on_every_try_propagates() -> None:
    callee = _Callee(*[grpc.StatusCode.UNAVAILABLE] * retry.TRIES)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retry.idempotent(callee)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert callee.calls == retry.TRIES


def test_the_retries_outlast_the_longest_reconnection_back_off() -> None:

    longest = dict(RECONNECT_OPTIONS)["grpc.max_reconnect_backoff_ms"] / 1000
    assert longest * 1.2 < (retry.TRIES - 1) * retry.PAUSE_SECONDS


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DEADLINE_EXCEEDED]
)
async def test_other_failures_are_not_retried(code: grpc.StatusCode) -> None:
    callee = _Callee(code)
    with pytest.raises(grpc.aio.AioRpcError):
        await retry.idempotent(callee)
    assert callee.calls == 1
