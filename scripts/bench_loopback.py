"""Two-party signing against the real services on loopback, beside a plain unary gRPC call.

:class:`Loopback` holds what the sections share: the running deployment (HSM proxy, gateway and
cosigner as separate processes, TLS everywhere), one public TLS channel to the cosigner per
simulated phone, an enrolled key per phone and, once asked for, an open signing session per phone.

The baseline ("echo") is the standard ``grpc.health.v1.Health/Check`` unary call on the
cosigner's public listener: same server process, same kind of channel, no application work.

All clients run in this process on one asyncio loop; its CPU use is reported beside the
cosigner's so that a saturated load generator is visible.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import client
from mobilesign.testing import Deployment
from mobilesign.v1 import ra_pb2, ra_pb2_grpc
from scripts.bench_common import (
    Distribution,
    Row,
    Section,
    Table,
    filesystem_of,
    ms,
    process_cpu_seconds,
    ratio,
)

PIN = "135790"
#: The brief's target: loopback signing latency within 2x of a plain unary gRPC call.
LATENCY_RATIO_TARGET = 2.0
#: What the cosigner process's CPU per signature over the network includes.
COSIGNER_PROCESS_INCLUDES = (
    "the whole cosigner process (all threads): TLS, HTTP/2 and gRPC stream handling, protobuf, "
    "the FROST cosigner core, and the SQLite work per signature through aiosqlite's thread (the "
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
    keys_per_user: int = 8
    enrol_parallelism: int = 8


def _message(client_index: int, n: int) -> bytes:
    return f"mobilesign bench client {client_index:03d} message {n:010d}".encode().ljust(64, b".")


class Loopback:
    """The deployment and the simulated phones the network sections share."""

    def __init__(self, deployment: Deployment, config: LoopbackConfig) -> None:
        self.deployment = deployment
        self.config = config
        self.cosigner_pid = deployment.services["cosigner"].process.pid
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

    async def _enrol(self, i: int) -> client.Keystore:
        admin = ra_pb2_grpc.AdminServiceStub(self._admin)
        user_id = self._user(i)
        ticket = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id, ttl_seconds=600)
        )
        started = time.perf_counter()
        keystore = await client.enrol(self.channel(i), ticket.ticket, PIN)
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
    """Measured runs of ``clients`` concurrent loops of one operation (possibly several rounds)."""

    clients: int
    seconds: float
    cosigner_cpu_seconds: float
    client_cpu_seconds: float
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

    @property
    def cosigner_cpu_ms_per_op(self) -> float:
        return self.cosigner_cpu_seconds / self.operations * 1e3

    @property
    def client_cpu_ms_per_op(self) -> float:
        return self.client_cpu_seconds / self.operations * 1e3

    @property
    def cosigner_utilisation(self) -> float:
        return self.cosigner_cpu_seconds / self.seconds

    @property
    def client_utilisation(self) -> float:
        return self.client_cpu_seconds / self.seconds

    def __add__(self, other: Run) -> Run:
        return Run(
            clients=self.clients,
            seconds=self.seconds + other.seconds,
            cosigner_cpu_seconds=self.cosigner_cpu_seconds + other.cosigner_cpu_seconds,
            client_cpu_seconds=self.client_cpu_seconds + other.client_cpu_seconds,
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
            "cosigner_cpu_ms_per_op": self.cosigner_cpu_ms_per_op,
            "cosigner_cpu_utilisation": self.cosigner_utilisation,
            "client_cpu_ms_per_op": self.client_cpu_ms_per_op,
            "client_cpu_utilisation": self.client_utilisation,
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
    cosigner_before = process_cpu_seconds(env.cosigner_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    samples = await _drive(clients, op, seconds=seconds, count=count)
    elapsed = time.perf_counter() - started
    return Run(
        clients=clients,
        seconds=elapsed,
        cosigner_cpu_seconds=process_cpu_seconds(env.cosigner_pid) - cosigner_before,
        client_cpu_seconds=time.process_time() - client_before,
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


async def round_trips(env: Loopback) -> Section:
    """Section: protocol messages, and reads that wait for the cosigner, per signature."""
    n = env.config.round_trip_signatures
    await env.ensure_sessions(1)
    session = env.sessions[0]
    # The SDK keeps its stream in ``_call``; counting around it observes the SDK unchanged.
    counter = _CountingCall(session._call)
    session._call = counter
    try:
        for _ in range(n):
            await env.sign(0)
    finally:
        session._call = counter.call
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
        Row("sign / echo, p99", ratio(p99), target, p99 <= LATENCY_RATIO_TARGET),
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
                    f"{run.cosigner_utilisation:.0%}",
                    ms(run.client_cpu_ms_per_op),
                    f"{run.client_utilisation:.0%}",
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
    heaviest = levels[-1]
    rows.append(
        Row(
            f"cosigner process CPU / signature ({heaviest['clients']} clients)",
            ms(heaviest["sign"]["cosigner_cpu_ms_per_op"]),
            note="whole process under load, see notes",
        )
    )
    section = Section(
        key="throughput",
        title=f"Throughput over loopback ({config.level_seconds:g} s per level and operation in "
        f"{config.level_rounds} alternating rounds; each client its own TLS channel, key and "
        "session)",
        rows=rows,
        tables=[table],
    )
    section.notes = [
        "sign/echo = signatures/s divided by echo calls/s at the same concurrency; echo = unary "
        "grpc.health.v1.Health/Check on the cosigner's public listener",
        f"cosigner CPU/op: {COSIGNER_PROCESS_INCLUDES}",
        "client CPU/op: this process (every simulated phone, its gRPC and TLS, the phone's FROST "
        "work); util = CPU seconds per wall second (100% = one core)",
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
