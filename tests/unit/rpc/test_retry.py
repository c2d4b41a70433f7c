"""One retry, after a pause, for an idempotent call whose callee was unreachable; no retry
for any other failure."""

from __future__ import annotations

import grpc
import pytest

from mobilesign.rpc import retry


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


async def test_unavailable_once_is_retried() -> None:
    callee = _Callee(grpc.StatusCode.UNAVAILABLE)
    assert await retry.idempotent(callee) == "answer"
    assert callee.calls == 2


async def test_unavailable_twice_propagates() -> None:
    callee = _Callee(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retry.idempotent(callee)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert callee.calls == 2


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DEADLINE_EXCEEDED]
)
async def test_other_failures_are_not_retried(code: grpc.StatusCode) -> None:
    callee = _Callee(code)
    with pytest.raises(grpc.aio.AioRpcError):
        await retry.idempotent(callee)
    assert callee.calls == 1
