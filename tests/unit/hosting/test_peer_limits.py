"""The public edge's per-peer cap: which address a call counts against (IPv4 by address, not
port; IPv6 by /64), the count refusing beyond its limit and freeing on release; the cosigner's
streams, which end a stream whose first message does not come in time; and unary requests read
as a stream's first message, refused when late, missing or malformed."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from cosigner.errors import CosignerError
from cosigner.stream import StepStream
from mobilesign.errors import Error, Kind
from mobilesign.hosting.interceptor import Malformed, PeerCounter, first_request, peer_address
from mobilesign.rpc import status
from mobilesign.rpc.wire import message_too_large
from mobilesign.v1 import cosigner_pb2 as pb


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50000", "127.0.0.1"),
        ("ipv4:127.0.0.1:50001", "127.0.0.1"),
        ("ipv4:203.0.113.7:1", "203.0.113.7"),
        ("ipv6:[::1]:443", "::/64"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff::9]:7", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2::1%5D:7", "2001:db8:1:2::/64"),
        ("ipv6:[fe80::1%25eth0]:7", "fe80::/64"),
        ("ipv6:[::ffff:198.51.100.4]:9", "198.51.100.4"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
        ("", ""),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_the_counter_refuses_beyond_its_limit_per_peer_and_frees_on_release() -> None:
    counter = PeerCounter(2)
    counter.acquire("a")
    counter.acquire("a")
    counter.acquire("b")
    with pytest.raises(Error) as info:
        counter.acquire("a")
    assert (info.value.kind, info.value.reason) == (Kind.EXHAUSTED, "TOO_MANY_RPCS_FROM_PEER")
    counter.release("a")
    counter.acquire("a")
    for _ in range(2):
        counter.release("a")
    counter.release("b")
    assert counter.in_flight("a") == counter.in_flight("b") == 0
    assert counter._counts == {}, "no entry outlives the calls it counts"


class _Context:
    """The part of a servicer context StepStream uses: messages arrive after given delays."""

    def __init__(self, *delays: float) -> None:
        self._delays = list(delays)

    async def read(self) -> Any:
        await asyncio.sleep(self._delays.pop(0))
        return pb.SignRequest(close=pb.SignClose())


async def _read(stream: StepStream[Any, Any]) -> str:
    step, _ = await stream.read("close")
    return step


async def test_no_first_message_in_time_ends_the_stream_with_its_own_reason() -> None:
    stream: StepStream[Any, Any] = StepStream(_Context(0.3), timeout=5, first_timeout=0.05)  # type: ignore[arg-type]
    with pytest.raises(CosignerError) as info:
        await _read(stream)
    assert (info.value.kind, info.value.reason) == (Kind.TIMEOUT, "FIRST_MESSAGE_TIMEOUT")


async def test_later_steps_get_the_step_timeout() -> None:
    # The first message within its short timeout; the second slower than that but within the
    # step timeout; the third past the step timeout.
    stream: StepStream[Any, Any] = StepStream(
        _Context(0.01, 0.15, 0.5),  # type: ignore[arg-type]
        timeout=0.3,
        first_timeout=0.1,
    )
    assert await _read(stream) == "close"
    assert await _read(stream) == "close"
    with pytest.raises(CosignerError) as info:
        await _read(stream)
    assert info.value.reason == "STEP_TIMEOUT"


def test_timeouts_answer_deadline_exceeded() -> None:
    assert status.code_of(Kind.TIMEOUT) == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_first_message_never_waits_longer_than_a_step() -> None:
    stream: StepStream[Any, Any] = StepStream(_Context(0.5), timeout=0.05, first_timeout=5)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with pytest.raises(CosignerError) as info:
        await _read(stream)
    assert info.value.reason == "FIRST_MESSAGE_TIMEOUT"
    assert asyncio.get_running_loop().time() - started < 0.4


class _UnaryContext:
    """A unary call served as a stream: its one request (or EOF) after a delay."""

    def __init__(self, delay: float, message: Any, cancelled: bool = False) -> None:
        self._delay = delay
        self._message = message
        self._cancelled = cancelled

    async def read(self) -> Any:
        await asyncio.sleep(self._delay)
        return self._message

    def cancelled(self) -> bool:
        return self._cancelled


async def test_a_call_cancelled_before_its_request_counts_as_cancelled_not_malformed() -> None:
    with pytest.raises(asyncio.CancelledError):
        await first_request(_UnaryContext(0.0, grpc.aio.EOF, cancelled=True), 0.05)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "message", "reason"),
    [
        (0.3, b"late", "FIRST_MESSAGE_TIMEOUT"),
        (0.0, grpc.aio.EOF, "MALFORMED_REQUEST"),
        (0.0, Malformed(message_too_large(10)), "MESSAGE_TOO_LARGE"),
    ],
)
async def test_a_unary_request_read_first_is_refused_late_missing_or_malformed(
    delay: float, message: Any, reason: str
) -> None:
    with pytest.raises(Error) as info:
        await first_request(_UnaryContext(delay, message), 0.05)  # type: ignore[arg-type]
    assert info.value.reason == reason


async def test_a_unary_request_in_time_is_handed_on() -> None:
    request = pb.SignRequest(close=pb.SignClose())
    assert await first_request(_UnaryContext(0.0, request), 1) is request  # type: ignore[arg-type]
