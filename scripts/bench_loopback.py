"""Two-party signing against the real services on loopback, beside a plain unary gRPC call.

:class:`Loopback` holds what the sections share: the running deployment (HSM proxy, gateway and
cosigner as separate processes, TLS everywhere), one public TLS channel to the cosigner per
simulated phone, an enrolled key per phone and, once asked for, an open signing session per phone.

The baseline ("echo") is the standard ``grpc.health.v1.Health/Check`` unary call on the
cosigner's public listener: same server process, same kind of channel, no application work.

All clients run in this process on one asyncio loop; its CPU use is reported beside each
service's so that a saturated load generator is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from unittest import mock

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import client
from mobilesign import deviceauth
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import ra_pb2, ra_pb2_grpc
from scripts.bench_common import (
    Distribution,
    ProcessMeter,
    Row,
    Section,
    Table,
    Usage,
    filesystem_of,
    ms,
    ratio,
)

PIN = "135790"
#: Issue 11's target: one client's signing p50 at most 2.5x a plain unary gRPC call's.
LATENCY_RATIO_TARGET = 2.5
#: Issue 11's targets at this many clients: signatures per second at least 0.45x the plain
#: call's, and the cosigner process's CPU per signature at most 0.5 ms.
TARGET_CLIENTS = 64
THROUGHPUT_RATIO_TARGET = 0.45
COSIGNER_CPU_MS_TARGET = 0.5
#: Issue 11's target: a DKG enrolment's p50 at most 10 ms, the PIN's key derivation excluded.
ENROLMENT_MS_TARGET = 10.0
#: The name under which this process (every simulated phone) is metered beside the services.
PHONES = "phones"
#: What the cosigner process's CPU per signature over the network includes.
COSIGNER_PROCESS_INCLUDES = (
    "the whole cosigner process (all threads): TLS, HTTP/2 and gRPC stream handling, protobuf, "
    "the FROST cosigner core, and the SQLite work per signature on the database's thread (the "
    "signing recorded in a durable commit before the share leaves, its unique index catching "
    "replays; its signature attached in a second durable commit on the report, written in the "
    "background); "
    "session set-up (device and PIN proof, HSM unseal) is outside the measured window"
)


@dataclass(frozen=True)
class LoopbackConfig:
    """Sizes of the network measurements."""

    latency_signatures: int = 500
    latency_warmup: int = 50
    latency_rounds: int = 5
    round_trip_signatures: int = 100
    levels: tuple[int, ...] = (1, 16, 64)
    level_seconds: float = 3.0
    level_warmup_seconds: float = 0.5
    level_rounds: int = 3
    fsync_samples: int = 200
    enrolment_samples: int = 30
    enrolment_warmup: int = 3
    keys_per_user: int = 8
    enrol_parallelism: int = 8


def _message(client_index: int, n: int) -> bytes:
    return f"mobilesign bench client {client_index:03d} message {n:010d}".encode().ljust(64, b".")


class Loopback:
    """The deployment and the simulated phones the network sections share."""

    def __init__(self, deployment: Deployment, config: LoopbackConfig) -> None:
        self.deployment = deployment
        self.config = config
        #: What :class:`ProcessMeter` watches: the four services and this process.
        self.processes = {name: deployment.services[name].process.pid for name in START_ORDER}
        self.processes[PHONES] = os.getpid()
        self._admin = deployment.channel("ra", "admin")
        self.users: set[str] = set()
        self.channels: list[grpc.aio.Channel] = []
        self.keystores: list[client.Keystore] = []
        self.sessions: list[client.SigningSession] = []
        self._health: list[Any] = []
        self.enrol_seconds: list[float] = []
        self.open_seconds: list[float] = []

    def channel(self, i: int) -> grpc.aio.Channel:
        """Phone ``i``'s own TLS channel to the cosigner's public listener."""
        while len(self.channels) <= i:
            self.channels.append(self.deployment.public_channel("cosigner"))
            self._health.append(health_pb2_grpc.HealthStub(self.channels[-1]))
        return self.channels[i]

    def _user(self, i: int) -> str:
        return f"bench-user-{i // self.config.keys_per_user:03d}"

    async def _ensure_user(self, user_id: str) -> None:
        if user_id not in self.users:
            await ra_pb2_grpc.AdminServiceStub(self._admin).CreateUser(
                ra_pb2.CreateUserRequest(user_id=user_id, display_name=f"Bench {user_id}")
            )
            self.users.add(user_id)

    async def ticket(self, user_id: str) -> bytes:
        """A fresh enrolment ticket for ``user_id``, creating the user when first named.

        Callers running enrolments side by side create their users first, in order, so that
        two never create one twice.
        """
        await self._ensure_user(user_id)
        issued = await ra_pb2_grpc.AdminServiceStub(self._admin).IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id, ttl_seconds=600)
        )
        return issued.ticket

    async def _enrol(self, i: int) -> client.Keystore:
        ticket = await self.ticket(self._user(i))
        started = time.perf_counter()
        keystore = await client.enrol(self.channel(i), ticket, PIN)
        self.enrol_seconds.append(time.perf_counter() - started)
        return keystore

    async def ensure_keys(self, n: int) -> None:
        """Enrol keys until there are ``n`` (several per user; a few enrolments at a time)."""
        first = len(self.keystores)
        for start in range(first, n, self.config.enrol_parallelism):
            stop = min(n, start + self.config.enrol_parallelism)
            # Users first, in order, so that parallel enrolments never create one twice.
            for i in range(start, stop):
                await self._ensure_user(self._user(i))
            self.keystores.extend(
                await asyncio.gather(*(self._enrol(i) for i in range(start, stop)))
            )

    async def _open(self, i: int) -> client.SigningSession:
        session = client.SigningSession(self.channel(i), self.keystores[i], PIN)
        started = time.perf_counter()
        await session.open()
        self.open_seconds.append(time.perf_counter() - started)
        return session

    async def ensure_sessions(self, n: int) -> None:
        """Open signing sessions (device and PIN proven) until ``n`` phones have one.

        Sessions are opened when first needed: the cosigner ends a session that stays idle
        longer than its step timeout (30 s by default).
        """
        await self.ensure_keys(n)
        for start in range(len(self.sessions), n, self.config.enrol_parallelism):
            stop = min(n, start + self.config.enrol_parallelism)
            self.sessions.extend(await asyncio.gather(*(self._open(i) for i in range(start, stop))))

    async def sign(self, i: int) -> bytes:
        """One joint signature by phone ``i`` in its open session (verified by the SDK)."""
        session = self.sessions[i]
        return await session.sign(_message(i, session.signed))

    async def echo(self, i: int) -> None:
        """One health ``Check`` on phone ``i``'s channel: the plain unary gRPC baseline."""
        reply = await self._health[i].Check(health_pb2.HealthCheckRequest())
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"cosigner health is {reply.status}")

    async def close(self, *, failed: bool) -> None:
        """Close every session (the cosigner confirms how many signatures it recorded)."""
        try:
            for session in self.sessions:
                if failed:
                    session.abort()
                else:
                    recorded = await session.close()
                    if recorded != session.signed:
                        raise RuntimeError("the cosigner did not record every signature")
        finally:
            for channel in self.channels:
                await channel.close()
            await self._admin.close()


@dataclass(frozen=True)
class Run:
    """Measured runs of ``clients`` concurrent loops of one operation (possibly several rounds),
    with the usage of each process of :attr:`Loopback.processes` over them."""

    clients: int
    seconds: float
    usage: dict[str, Usage]
    samples_ns: tuple[int, ...]
    rounds_per_second: tuple[float, ...]

    @property
    def operations(self) -> int:
        return len(self.samples_ns)

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds

    @property
    def latency(self) -> Distribution:
        return Distribution.of_ns(list(self.samples_ns))

    def cpu_ms_per_op(self, process: str) -> float:
        return self.usage[process].cpu_seconds / self.operations * 1e3

    def utilisation(self, process: str) -> float:
        return self.usage[process].cpu_seconds / self.seconds

    def switches_per_op(self, process: str) -> float:
        return self.usage[process].voluntary_switches / self.operations

    @property
    def cosigner_cpu_ms_per_op(self) -> float:
        return self.cpu_ms_per_op("cosigner")

    @property
    def client_cpu_ms_per_op(self) -> float:
        return self.cpu_ms_per_op(PHONES)

    def __add__(self, other: Run) -> Run:
        return Run(
            clients=self.clients,
            seconds=self.seconds + other.seconds,
            usage={name: u + other.usage[name] for name, u in self.usage.items()},
            samples_ns=self.samples_ns + other.samples_ns,
            rounds_per_second=self.rounds_per_second + other.rounds_per_second,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "operations": self.operations,
            "seconds": self.seconds,
            "per_second": self.per_second,
            "per_second_by_round": list(self.rounds_per_second),
            "cpu_ms_per_op": {name: self.cpu_ms_per_op(name) for name in self.usage},
            "cpu_utilisation": {name: self.utilisation(name) for name in self.usage},
            "voluntary_context_switches_per_op": {
                name: self.switches_per_op(name) for name in self.usage
            },
            "latency": asdict(self.latency),
        }


Operation = Callable[[int], Awaitable[object]]


async def _drive(
    clients: int, op: Operation, *, seconds: float | None = None, count: int | None = None
) -> list[int]:
    """Run ``op(i)`` in a loop on each of ``clients`` tasks, for ``seconds`` or ``count`` calls
    per client; the duration of every call in nanoseconds."""
    loop = asyncio.get_running_loop()
    deadline = math.inf if seconds is None else loop.time() + seconds
    per_client = math.inf if count is None else count
    samples: list[int] = []

    async def worker(i: int) -> None:
        done = 0
        while done < per_client and loop.time() < deadline:
            started = time.perf_counter_ns()
            await op(i)
            samples.append(time.perf_counter_ns() - started)
            done += 1

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return samples


async def _measure(
    env: Loopback, clients: int, op: Operation, *, seconds: float | None, count: int | None
) -> Run:
    meter = ProcessMeter(env.processes)
    started = time.perf_counter()
    samples = await _drive(clients, op, seconds=seconds, count=count)
    elapsed = time.perf_counter() - started
    return Run(
        clients=clients,
        seconds=elapsed,
        usage=meter.read(),
        samples_ns=tuple(samples),
        rounds_per_second=(len(samples) / elapsed,),
    )


async def _alternate(
    env: Loopback,
    clients: int,
    operations: dict[str, Operation],
    *,
    rounds: int,
    seconds: float | None = None,
    count: int | None = None,
) -> dict[str, Run]:
    """Measure each operation in turn, ``rounds`` times, so that a slow patch of the machine
    weighs on all of them alike; ``seconds``/``count`` are per round (count: per client)."""
    runs: dict[str, Run] = {}
    for _ in range(rounds):
        for name, op in operations.items():
            run = await _measure(env, clients, op, seconds=seconds, count=count)
            runs[name] = runs[name] + run if name in runs else run
    return runs


class _CountingCall:
    """Wraps a session's stream call and counts the messages the SDK writes and reads."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.reads = 0
        self.writes = 0

    async def read(self) -> Any:
        self.reads += 1
        return await self.call.read()

    async def write(self, message: Any) -> None:
        self.writes += 1
        await self.call.write(message)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.call.__await__()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)


@contextlib.contextmanager
def counting_streams(sessions: Sequence[client.SigningSession]) -> Iterator[list[_CountingCall]]:
    """Count the messages each session's Sign stream carries while the block runs."""
    # The SDK keeps its stream in ``_call``; counting around it observes the SDK unchanged.
    counters = [_CountingCall(session._call) for session in sessions]
    for session, counter in zip(sessions, counters, strict=True):
        session._call = counter
    try:
        yield counters
    finally:
        for session, counter in zip(sessions, counters, strict=True):
            session._call = counter.call


async def round_trips(env: Loopback) -> Section:
    """Section: protocol messages, and reads that wait for the cosigner, per signature."""
    n = env.config.round_trip_signatures
    await env.ensure_sessions(1)
    with counting_streams(env.sessions[:1]) as (counter,):
        for _ in range(n):
            await env.sign(0)
    reads, writes = counter.reads / n, counter.writes / n
    section = Section(
        key="round_trips",
        title=f"Round trips per signature (client SDK over loopback, {n} signatures)",
    )
    section.rows = [
        Row(
            "round trips / signature",
            f"{reads:g}",
            "1",
            reads == 1,
            "reads that wait for the cosigner (its share)",
        ),
        Row(
            "messages phone -> cosigner / signature",
            f"{writes:g}",
            note="commit, then the report written without waiting",
        ),
        Row("messages cosigner -> phone / signature", f"{reads:g}", note="share"),
    ]
    section.data = {
        "signatures": n,
        "round_trips_per_signature": reads,
        "messages_phone_to_cosigner_per_signature": writes,
        "messages_cosigner_to_phone_per_signature": reads,
        "method": "count read()/write() on the SDK's Sign stream while SigningSession.sign runs",
    }
    return section


async def latency(env: Loopback) -> Section:
    """Section: one client, sequential signatures in one session, beside sequential echoes."""
    config = env.config
    await env.ensure_sessions(1)
    await _drive(1, env.sign, count=config.latency_warmup)
    await _drive(1, env.echo, count=config.latency_warmup)
    runs = await _alternate(
        env,
        1,
        {"sign": env.sign, "echo": env.echo},
        rounds=config.latency_rounds,
        count=config.latency_signatures // config.latency_rounds,
    )
    sign, echo = runs["sign"], runs["echo"]
    sign_latency, echo_latency = sign.latency, echo.latency
    p50 = sign_latency.p50_ms / echo_latency.p50_ms
    p99 = sign_latency.p99_ms / echo_latency.p99_ms
    target = f"<= {LATENCY_RATIO_TARGET:g}x"
    section = Section(
        key="latency",
        title=f"Latency, one client, sequential ({sign.operations} signatures in one session, "
        f"{echo.operations} health Checks, in {config.latency_rounds} alternating blocks, after "
        f"{config.latency_warmup} warm-up each)",
    )
    section.rows = [
        Row("sign p50", ms(sign_latency.p50_ms), note=f"mean {ms(sign_latency.mean_ms)}"),
        Row("sign p99", ms(sign_latency.p99_ms), note=f"max {ms(sign_latency.max_ms)}"),
        Row("echo p50 (unary health Check)", ms(echo_latency.p50_ms)),
        Row("echo p99 (unary health Check)", ms(echo_latency.p99_ms)),
        Row("sign / echo, p50", ratio(p50), target, p50 <= LATENCY_RATIO_TARGET),
        Row("sign / echo, p99", ratio(p99), note="issue 11 sets no p99 target"),
        Row(
            "cosigner process CPU / signature",
            ms(sign.cosigner_cpu_ms_per_op),
            note=f"echo: {ms(echo.cosigner_cpu_ms_per_op)} per call",
        ),
        Row(
            "client process CPU / signature",
            ms(sign.client_cpu_ms_per_op),
            note=f"echo: {ms(echo.client_cpu_ms_per_op)} per call",
        ),
    ]
    section.notes = [
        "sign = SigningSession.sign: commit written, share read, share and signature verified, "
        "report written without waiting (the cosigner records it in the background)",
        f"cosigner process CPU: {COSIGNER_PROCESS_INCLUDES}",
    ]
    section.data = {
        "sign": sign.to_json(),
        "echo": echo.to_json(),
        "ratio_p50": p50,
        "ratio_p99": p99,
        "cosigner_cpu_includes": COSIGNER_PROCESS_INCLUDES,
    }
    return section


async def throughput(env: Loopback) -> Section:
    """Section: signatures per second at each concurrency level, beside echo calls per second."""
    config = env.config
    table = Table(
        headers=(
            "clients",
            "op",
            "ops/s",
            "sign/echo",
            "p50",
            "p99",
            "cosigner CPU/op",
            "cosigner util",
            "client CPU/op",
            "client util",
        ),
        rows=[],
    )
    levels: list[dict[str, Any]] = []
    rows: list[Row] = []
    sign_runs: dict[int, Run] = {}
    echo_runs: dict[int, Run] = {}
    per_round = config.level_seconds / config.level_rounds
    for clients in config.levels:
        await env.ensure_sessions(clients)
        operations: dict[str, Operation] = {"sign": env.sign, "echo": env.echo}
        for op in operations.values():
            await _drive(clients, op, seconds=config.level_warmup_seconds)
        runs = await _alternate(
            env, clients, operations, rounds=config.level_rounds, seconds=per_round
        )
        sign, echo = runs["sign"], runs["echo"]
        sign_runs[clients], echo_runs[clients] = sign, echo
        share = sign.per_second / echo.per_second
        for name, run in runs.items():
            run_latency = run.latency
            table.rows.append(
                (
                    str(clients),
                    name,
                    f"{run.per_second:,.0f}",
                    f"{share:.2f}" if name == "sign" else "",
                    ms(run_latency.p50_ms),
                    ms(run_latency.p99_ms),
                    ms(run.cosigner_cpu_ms_per_op),
                    f"{run.utilisation('cosigner'):.0%}",
                    ms(run.client_cpu_ms_per_op),
                    f"{run.utilisation(PHONES):.0%}",
                )
            )
        rows.append(
            Row(
                f"signatures / s, {clients} client{'s' if clients > 1 else ''}",
                f"{sign.per_second:,.0f}",
                note=f"{share:.2f} of echo ({echo.per_second:,.0f} calls/s)",
            )
        )
        levels.append(
            {
                "clients": clients,
                "ratio_sign_to_echo_per_second": share,
                "sign": sign.to_json(),
                "echo": echo.to_json(),
            }
        )
    heaviest = max(sign_runs)
    share = sign_runs[heaviest].per_second / echo_runs[heaviest].per_second
    cosigner_ms = sign_runs[heaviest].cosigner_cpu_ms_per_op
    at_target = heaviest == TARGET_CLIENTS
    rows.append(
        Row(
            f"signatures / s ÷ echo calls / s ({heaviest} clients)",
            ratio(share),
            f">= {THROUGHPUT_RATIO_TARGET:g}x" if at_target else "",
            share >= THROUGHPUT_RATIO_TARGET if at_target else None,
            "both measured in this run, alternating",
        )
    )
    rows.append(
        Row(
            f"cosigner process CPU / signature ({heaviest} clients)",
            ms(cosigner_ms),
            f"<= {COSIGNER_CPU_MS_TARGET:g} ms" if at_target else "",
            cosigner_ms <= COSIGNER_CPU_MS_TARGET if at_target else None,
            "whole process under load, see notes",
        )
    )
    section = Section(
        key="throughput",
        title=f"Throughput over loopback ({config.level_seconds:g} s per level and operation in "
        f"{config.level_rounds} alternating rounds; each client its own TLS channel, key and "
        "session)",
        rows=rows,
        tables=[table, _breakdown(sign_runs, echo_runs[heaviest])],
    )
    section.notes = [
        "sign/echo = signatures/s divided by echo calls/s at the same concurrency; echo = unary "
        "grpc.health.v1.Health/Check on the cosigner's public listener",
        f"cosigner CPU/op: {COSIGNER_PROCESS_INCLUDES}",
        "client CPU/op: this process (every simulated phone, its gRPC and TLS, the phone's FROST "
        "work); util = CPU seconds per wall second (100% = one core)",
        "per-process table: user + system CPU per signature of each process (all its threads, "
        "from /proc/<pid>/stat) over the measured rounds; vol. switches = voluntary context "
        "switches of all its threads (/proc/<pid>/task/*/status) per signature",
    ]
    section.data = {
        "levels": levels,
        "cosigner_cpu_includes": COSIGNER_PROCESS_INCLUDES,
        "users": len(env.users),
        "keys": len(env.keystores),
        "enrolment_seconds_mean": sum(env.enrol_seconds) / max(1, len(env.enrol_seconds)),
        "session_open_seconds_mean": sum(env.open_seconds) / max(1, len(env.open_seconds)),
    }
    return section


def _breakdown(sign: dict[int, Run], echo: Run) -> Table:
    """Per process: CPU per signature at each level, per echo call at the heaviest level, and
    voluntary context switches per signature at the heaviest level."""
    heaviest = sign[max(sign)]
    services = list(START_ORDER)
    table = Table(
        headers=(
            "process",
            *(f"sign CPU/op @{clients}" for clients in sign),
            f"util @{echo.clients}",
            f"vol. switches/op @{echo.clients}",
            f"echo CPU/op @{echo.clients}",
        ),
        rows=[],
    )
    for name in [*services, PHONES]:
        table.rows.append(
            (
                name,
                *(ms(run.cpu_ms_per_op(name)) for run in sign.values()),
                f"{heaviest.utilisation(name):.0%}",
                f"{heaviest.switches_per_op(name):.1f}",
                ms(echo.cpu_ms_per_op(name)),
            )
        )
    table.rows.append(
        (
            "4 services",
            *(ms(sum(run.cpu_ms_per_op(n) for n in services)) for run in sign.values()),
            f"{sum(heaviest.utilisation(n) for n in services):.0%}",
            f"{sum(heaviest.switches_per_op(n) for n in services):.1f}",
            ms(sum(echo.cpu_ms_per_op(n) for n in services)),
        )
    )
    return table


async def enrolment(env: Loopback) -> Section:
    """Section: DKG enrolments over loopback, one at a time, with the PIN derivation timed apart.

    Each ``client.enrol`` (device key, the two DKG rounds and the confirmation on one KeyGen
    stream, the cosigner sealing and storing its share) is timed whole; the SDK's call to
    ``deviceauth.pin_verifier`` inside it (deliberately slow PBKDF2) is timed by itself and
    subtracted from that same enrolment. Tickets are issued outside the timed span.
    """
    config = env.config
    channel = env.channel(0)
    derivations: list[int] = []
    derive = deviceauth.pin_verifier

    def timed_derivation(pin: str, device_spki: bytes) -> bytes:
        started = time.perf_counter_ns()
        try:
            return derive(pin, device_spki)
        finally:
            derivations.append(time.perf_counter_ns() - started)

    whole: list[int] = []
    pin: list[int] = []
    with mock.patch.object(deviceauth, "pin_verifier", timed_derivation):
        for i in range(config.enrolment_warmup + config.enrolment_samples):
            ticket = await env.ticket(f"bench-dkg-{i // config.keys_per_user:03d}")
            derivations.clear()
            started = time.perf_counter_ns()
            await client.enrol(channel, ticket, PIN)
            elapsed = time.perf_counter_ns() - started
            if len(derivations) != 1:
                raise RuntimeError(f"an enrolment derived the PIN {len(derivations)} times")
            if i >= config.enrolment_warmup:
                whole.append(elapsed)
                pin.append(derivations[0])
    enrol = Distribution.of_ns(whole)
    derivation = Distribution.of_ns(pin)
    rest = Distribution.of_ns([w - d for w, d in zip(whole, pin, strict=True)])
    section = Section(
        key="enrolment",
        title=f"DKG enrolment over loopback, one at a time ({enrol.count} enrolments after "
        f"{config.enrolment_warmup} warm-up)",
    )
    section.rows = [
        Row("enrolment p50, whole", ms(enrol.p50_ms), note=f"p99 {ms(enrol.p99_ms)}"),
        Row(
            "PIN key derivation p50, by itself",
            ms(derivation.p50_ms),
            note=f"PBKDF2-HMAC-SHA256, {deviceauth.PBKDF2_ITERATIONS:,} iterations, on the phone",
        ),
        Row(
            "enrolment p50 without the PIN derivation",
            ms(rest.p50_ms),
            f"<= {ENROLMENT_MS_TARGET:g} ms",
            rest.p50_ms <= ENROLMENT_MS_TARGET,
            f"p99 {ms(rest.p99_ms)}",
        ),
    ]
    section.notes = [
        "enrolment = client.enrol on one TLS channel to the cosigner: device key generated, "
        "KeyGen stream (start with the PIN verifier and the phone's commitment, the cosigner's "
        "commitment, secret shares, confirmation signed by the device key), the cosigner sealing "
        "its share and the PIN verifier in the HSM and storing them durably; the ticket is issued "
        "by the RA before the timer starts",
        "without the PIN derivation = each enrolment's time minus the time of its own "
        "deviceauth.pin_verifier call (timed by itself inside it), then the p50 of those",
    ]
    section.data = {
        "enrolment": asdict(enrol),
        "pin_derivation": asdict(derivation),
        "enrolment_without_pin_derivation": asdict(rest),
        "pbkdf2_iterations": deviceauth.PBKDF2_ITERATIONS,
    }
    return section


async def durable_write(env: Loopback) -> Section:
    """Section (a machine ceiling): write 4 KiB and fsync, in the services' state directory.

    The cosigner commits twice per signature with ``synchronous=FULL`` (each commit syncs the
    SQLite WAL), so this bounds how fast one session can sign on this disk.
    """
    count = env.config.fsync_samples
    path = env.deployment.state_dir / "bench-fsync.tmp"
    block = os.urandom(4096)
    samples: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            started = time.perf_counter_ns()
            os.write(fd, block)
            os.fsync(fd)
            samples.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        path.unlink()
    dist = Distribution.of_ns(samples)
    filesystem = filesystem_of(env.deployment.state_dir)
    section = Section(
        key="durable_write",
        title=f"Machine ceiling: append 4 KiB + fsync in the services' state directory "
        f"({filesystem}, {count} times)",
    )
    section.rows = [
        Row("write + fsync p50", ms(dist.p50_ms)),
        Row("write + fsync p99", ms(dist.p99_ms)),
    ]
    section.notes = [
        "each signature costs the cosigner two SQLite commits (WAL, synchronous=FULL: each syncs "
        "the WAL): one before the share leaves, on the session's sequential path, and one for "
        "the report, in the background (awaited before the session closes)",
    ]
    section.data = {"filesystem": filesystem, "latency": asdict(dist)}
    return section


async def run(
    deployment: Deployment,
    config: LoopbackConfig,
    sections: list[Callable[[Loopback], Awaitable[Section]]],
) -> list[Section]:
    """Run the network ``sections`` in order against ``deployment``; they share a Loopback."""
    env = Loopback(deployment, config)
    results: list[Section] = []
    failed = True
    try:
        for section in sections:
            results.append(await section(env))
        failed = False
    finally:
        await env.close(failed=failed)
    return results
