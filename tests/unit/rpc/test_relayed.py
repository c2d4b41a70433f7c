"""A callee's failure relayed as the caller's own error: its kind, reason and message kept, or
the caller's "unreachable" reason when there is nothing to keep."""

from __future__ import annotations

import grpc
import pytest

from mobilesign.errors import Error, Kind
from mobilesign.rpc.status import relayed, status_metadata


class _Mine(Error):
    pass


def _failure(code: grpc.StatusCode, reason: str | None, details: str) -> grpc.aio.AioRpcError:
    trailing = status_metadata(code, reason, details) if reason else ()
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def test_a_refusal_keeps_its_kind_reason_and_message() -> None:
    error = relayed(
        _failure(grpc.StatusCode.PERMISSION_DENIED, "TICKET_USED", "used"), _Mine, "RA", "RA_DOWN"
    )
    assert isinstance(error, _Mine)
    assert (error.kind, error.reason, error.message) == (Kind.DENIED, "TICKET_USED", "used")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_unreachable_callee_is_unavailable(code: grpc.StatusCode) -> None:
    error = relayed(_failure(code, "WHATEVER", "x"), _Mine, "RA", "RA_UNAVAILABLE")
    assert (error.kind, error.reason) == (Kind.UNAVAILABLE, "RA_UNAVAILABLE")


def test_a_failure_without_a_reason_keeps_its_kind_under_the_callers_reason() -> None:
    error = relayed(
        _failure(grpc.StatusCode.RESOURCE_EXHAUSTED, None, ""), _Mine, "HSM proxy", "HSM_DOWN"
    )
    assert (error.kind, error.reason) == (Kind.EXHAUSTED, "HSM_DOWN")
    assert "RESOURCE_EXHAUSTED" in error.message
