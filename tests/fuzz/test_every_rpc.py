"""Every RPC of every service, fuzzed against the running processes.

Unary RPCs get random bytes and mutated messages (from the descriptors) from every caller that
matters; the two streams get broken protocol runs (``tests.fuzz.streams``). Each answer is
judged by ``tests.fuzz.harness``: never INTERNAL or UNKNOWN, a reason on every error, and no
state change after a refusal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import messages, profiles, streams
from tests.fuzz.conftest import Context
from tests.fuzz.harness import HOSTS, call_unary, callers, methods

pytestmark = pytest.mark.integration

StreamFuzz = Callable[[Any, streams.Material, Any, str], Awaitable[None]]
#: The strategy of each streaming RPC (unary ones are all built from their descriptors).
STREAMS: dict[str, StreamFuzz] = {
    "mobilesign.v1.CosignerService.KeyGen": streams.keygen,
    "mobilesign.v1.CosignerService.Sign": streams.sign,
    "mobilesign.v1.RegistrationService.WatchChanges": streams.watch,
}
#: Who opens each stream (the cosigner's are public, the RA's internal only).
STREAM_CALLERS = {
    "mobilesign.v1.CosignerService.KeyGen": streams.STREAM_CALLERS,
    "mobilesign.v1.CosignerService.Sign": streams.STREAM_CALLERS,
    "mobilesign.v1.RegistrationService.WatchChanges": streams.WATCH_CALLERS,
}

UNARY = [
    pytest.param(service, method, id=f"{service.name}.{method.name}")
    for service, method in methods()
    if not (method.client_streaming or method.server_streaming)
]
STREAMING = [
    method.full_name
    for _, method in methods()
    if method.client_streaming or method.server_streaming
]


def test_every_rpc_has_a_strategy() -> None:
    """A new RPC is fuzzed at once (unary) or fails here until it has a strategy (streams)."""
    missing = []
    for service, method in methods():
        if service.full_name not in HOSTS:
            missing.append(f"{service.full_name} (no host)")
        elif (method.client_streaming or method.server_streaming) and (
            method.full_name not in STREAMS
        ):
            missing.append(method.full_name)
    assert missing == []
    assert len(UNARY) + len(STREAMING) == sum(1 for _ in methods())
    assert sorted(STREAMING) == sorted(STREAMS) == sorted(STREAM_CALLERS)


def _metadata(
    service: ServiceDescriptor, token: str
) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    if service.name != "GatewayService":
        return st.just(())
    return st.sampled_from(
        (
            (),
            (("authorization", f"Bearer {token}"),),
            (("authorization", "Bearer " + "A" * 43),),
            (("authorization", "Bearer"),),
            (("authorization", f"bearer {token}"),),
            (("x-request-id", "x" * 65), ("authorization", f"Bearer {token}")),
        )
    )


@pytest.mark.parametrize(("service", "method"), UNARY)
@profiles.for_kind("unary")
@given(data=st.data())
def test_unary(
    fuzz_context: Context, service: ServiceDescriptor, method: MethodDescriptor, data: Any
) -> None:
    sizes = messages.Sizes(HOSTS[service.full_name][1])
    caller = data.draw(st.sampled_from(callers(service)), label="caller")
    kind = data.draw(st.sampled_from(("raw", "mutated", "mutated", "mutated")), label="kind")
    if kind == "raw":
        request = data.draw(messages.raw_bytes(sizes), label="request")
    else:
        request = data.draw(
            messages.message_bytes(method.input_type, fuzz_context.seeds, sizes), label="request"
        )
    metadata = data.draw(_metadata(service, fuzz_context.session_token), label="metadata")
    fuzz = fuzz_context.fuzz
    fuzz.run(call_unary(fuzz, service, method, caller, request, metadata, f"{caller} {kind}"))


@profiles.for_kind("KeyGen")
@given(data=st.data())
def test_keygen_stream(fuzz_context: Context, data: Any) -> None:
    _stream(fuzz_context, "mobilesign.v1.CosignerService.KeyGen", data)


@profiles.for_kind("Sign")
@given(data=st.data())
def test_sign_stream(fuzz_context: Context, data: Any) -> None:
    _stream(fuzz_context, "mobilesign.v1.CosignerService.Sign", data)


@profiles.for_kind("WatchChanges")
@given(data=st.data())
def test_watch_stream(fuzz_context: Context, data: Any) -> None:
    _stream(fuzz_context, "mobilesign.v1.RegistrationService.WatchChanges", data)


def _stream(fuzz_context: Context, name: str, data: Any) -> None:
    caller = data.draw(st.sampled_from(STREAM_CALLERS[name]), label="caller")
    fuzz = fuzz_context.fuzz
    fuzz.run(STREAMS[name](fuzz, fuzz_context.material, data, caller))
