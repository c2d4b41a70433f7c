"""The fuzz deployment, its callers, the judgement of each answer, and the tally.

Each call is judged the same way: INTERNAL and UNKNOWN are never acceptable; every other error
carries a ``google.rpc.ErrorInfo`` reason, except what the transport says by itself
(UNAVAILABLE, DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED for a message over twice the service's
limit, as the README documents); and after a refusal the observable state (audit log size, the
CA's certificates, the cosigner's keys, the token's keys) is what it was before.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cosigner.config import CosignerConfig
from hsm_proxy.config import HsmProxyConfig
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import (
    cosigner_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    hsm_pb2,
    ra_pb2,
)
from ra.config import RaConfig
from server.config import GatewayConfig

#: Every service, from the generated descriptors (a new RPC is fuzzed, or flagged, at once).
SERVICES: tuple[ServiceDescriptor, ...] = (
    *hsm_pb2.DESCRIPTOR.services_by_name.values(),
    *ra_pb2.DESCRIPTOR.services_by_name.values(),
    *gateway_pb2.DESCRIPTOR.services_by_name.values(),
    *cosigner_pb2.DESCRIPTOR.services_by_name.values(),
)

#: Which deployment service hosts each gRPC service, and its application message limit (the
#: built-in configuration, which the fuzz deployment keeps).
HOSTS: dict[str, tuple[str, int]] = {
    "mobilesign.v1.HsmService": ("hsm-proxy", HsmProxyConfig.max_message_bytes),
    "mobilesign.v1.AdminService": ("ra", RaConfig.max_message_bytes),
    "mobilesign.v1.RegistrationService": ("ra", RaConfig.max_message_bytes),
    "mobilesign.v1.GatewayService": ("gateway", GatewayConfig.max_message_bytes),
    "mobilesign.v1.CosignerService": ("cosigner", CosignerConfig.max_message_bytes),
}

#: The caller used on the public listener (no client certificate).
PUBLIC = "public"
#: Internal identities: every one of the development PKI's client certificates.
INTERNAL = ("admin", "gateway", "cosigner", "ra", "hsm-proxy")
#: Codes the transport (not the service) may answer with, without a reason.
TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CALL_TIMEOUT = 20.0


def methods() -> Iterator[tuple[ServiceDescriptor, MethodDescriptor]]:
    """Every (service, method) pair of the API."""
    for service in SERVICES:
        for method in service.methods:
            yield service, method


def path_of(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


def callers(service: ServiceDescriptor) -> tuple[str, ...]:
    """Every identity that matters for a service: each internal one (authorised or refused),
    and no certificate at all where the service has a public listener."""
    host = HOSTS[service.full_name][0]
    public = (PUBLIC,) if host in ("gateway", "cosigner") else ()
    return (*public, *INTERNAL)


@dataclass(frozen=True)
class State:
    """What a refused call must not change."""

    log_size: int
    certificates: int
    cosigner_keys: int
    token_objects: int


@dataclass
class Tally:
    """Cases run and flagged, per RPC."""

    ran: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def report(self) -> str:
        """Cases, flagged cases, accepted cases and distinct refusals (code and reason) per RPC:
        the last two show that both the authorised and the refused paths were reached."""
        lines = [f"{'rpc':44} {'cases':>8} {'flagged':>8} {'accepted':>9} {'refusals':>9}"]
        for name in sorted(self.ran):
            answers = {code for rpc, code in self.codes if rpc == name and code != "OK"}
            lines.append(
                f"{name:44} {self.ran[name]:>8} {self.flagged[name]:>8}"
                f" {self.codes[(name, 'OK')]:>9} {len(answers):>9}"
            )
        lines.append(f"{'total':44} {sum(self.ran.values()):>8} {sum(self.flagged.values()):>8}")
        return "\n".join(lines)


TALLY = Tally()


class Flagged(AssertionError):
    """A call answered in a way the fuzz does not accept."""


def _count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
    finally:
        connection.close()
    return int(count)


class Fuzz:
    """The fuzz deployment's channels (one per caller and service) on one event loop."""

    def __init__(self, deployment: Deployment, loop: asyncio.AbstractEventLoop) -> None:
        self.deployment = deployment
        self.loop = loop
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._state: State | None = None

    def channel(self, host: str, caller: str) -> grpc.aio.Channel:
        key = (host, caller)
        if key not in self._channels:
            if caller == PUBLIC:
                self._channels[key] = self.deployment.public_channel(host)
            else:
                self._channels[key] = self.deployment.channel(host, caller)
        return self._channels[key]

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def run(self, coroutine: Any) -> Any:
        """Run one example; after any failure the cached state is read afresh."""
        try:
            return self.loop.run_until_complete(coroutine)
        except BaseException:
            self.changed()
            raise

    # State --------------------------------------------------------------------------------

    async def state(self) -> State:
        """The state now. The token's objects are counted from SoftHSM2's files, read-only
        (cheaper than the HSM proxy's ListKeys after every call, and they include every key)."""
        gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel("gateway", "admin"))
        note = (await gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        state_dir = self.deployment.state_dir
        return State(
            log_size=int(note.split(b"\n")[1]),
            certificates=_count(state_dir / "ra" / "ca.db", "certificates"),
            cosigner_keys=_count(state_dir / "cosigner" / "cosigner.db", "keys"),
            token_objects=sum(1 for _ in (state_dir / "hsm" / "tokens").rglob("*.object")),
        )

    async def before(self) -> State:
        """The state before a call (cached while calls are refused)."""
        if self._state is None:
            self._state = await self.state()
        return self._state

    def changed(self) -> None:
        """A call succeeded: the state may legitimately have moved on."""
        self._state = None

    # Judgement ----------------------------------------------------------------------------

    async def judge_state(self, rpc: str, before: State, what: str) -> None:
        """Judge only the state (the answer was lost on this side); count the case."""
        TALLY.ran[rpc] += 1
        TALLY.codes[(rpc, "client-side send failure")] += 1
        after = await self.state()
        if after != before:
            self.changed()
            TALLY.flagged[rpc] += 1
            raise Flagged(f"{rpc} ({what}): state changed by a refused call: {before} -> {after}")

    async def judge(
        self,
        rpc: str,
        before: State,
        error: grpc.aio.AioRpcError | None,
        request_size: int,
        limit: int,
        what: str,
        check_state: bool = True,
    ) -> None:
        """Judge one call's outcome; raise :class:`Flagged` (and count it) when unacceptable."""
        TALLY.ran[rpc] += 1
        if error is None:
            TALLY.codes[(rpc, "OK")] += 1
            self.changed()
            return
        code = error.code()
        reason = reason_of(error)
        TALLY.codes[(rpc, f"{code.name} {reason}")] += 1
        problem = None
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            problem = f"{code.name} {reason}"
        elif reason is None:
            transport = code in TRANSPORT_CODES or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and request_size > 2 * limit
            )
            if not transport:
                problem = f"{code.name} without an ErrorInfo reason"
        if problem is None and check_state:
            after = await self.state()
            if after != before:
                problem = f"state changed by a refused call: {before} -> {after}"
                self._state = after
        if problem is not None:
            self.changed()
            TALLY.flagged[rpc] += 1
            raise Flagged(
                f"{rpc} ({what}): {problem}: {error.details()!r} {error.debug_error_string()}"
            )


async def call_unary(
    fuzz: Fuzz,
    service: ServiceDescriptor,
    method: MethodDescriptor,
    caller: str,
    request: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    what: str = "",
) -> None:
    """Send ``request`` as the serialized request of a unary RPC and judge the answer."""
    host, limit = HOSTS[service.full_name]
    callable_: Any = fuzz.channel(host, caller).unary_unary(
        path_of(service, method), request_serializer=None, response_deserializer=None
    )
    before = await fuzz.before()
    error = None
    try:
        await callable_(request, metadata=tuple(metadata), timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        error = exc
    await fuzz.judge(
        f"{service.name}.{method.name}", before, error, len(request), limit, what or caller
    )


@contextlib.contextmanager
def suppressed_write_errors() -> Iterator[None]:
    """Writing to a stream the server already ended fails; the read that follows says why."""
    with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
        yield
