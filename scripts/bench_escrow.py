"""Organisation-key uses end to end, beside raw SoftHSM signing through python-pkcs11.

* **raw**: ECDSA P-256 signatures of 32-byte digests straight through python-pkcs11 on a
  SoftHSM2 token of this process's own (temporary), with one session per worker thread, at 1 and
  at 2 concurrent workers (this machine's ceiling for the token).
* **end to end**: each use is ``GatewaySession.use_key`` from a phone: PrepareOperation (session,
  certificate and grant checked, record built), the record co-signed with the cosigner (one FROST
  round trip), ExecuteOperation (user signature verified, quota consumed and the record appended
  to the audit log durably, a checkpoint that includes it witnessed by the HSM proxy, the proxy's
  check next to the key, the organisation key's ECDSA signature, the outcome logged), and the
  phone verifying the receipt. Each use costs the HSM one organisation-key signature and a share
  of one checkpoint signature (``SignCheckpoint``: one covers every use logged before it).

At each level, over the measured window: each process's CPU and voluntary context switches
(:class:`scripts.bench_common.ProcessMeter`), the RPCs each service served (its JSON ``rpc`` log
lines), and the round trips on the phones' open Sign streams. Then, in separate windows at the
lowest and the highest level, strace counts the services' fsyncs (tracing slows them down, so
those windows give counts only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import client
from hsm_proxy import keys, token
from hsm_proxy.config import HsmProxyConfig
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, ra_pb2, ra_pb2_grpc
from scripts.bench_common import (
    SYNC_SYSCALLS,
    Distribution,
    ProcessMeter,
    Row,
    Section,
    SyscallCounter,
    Table,
    Usage,
    ms,
    ratio,
)
from scripts.bench_loopback import (
    PHONES,
    PIN,
    TARGET_CLIENTS,
    Loopback,
    Operation,
    _drive,
    counting_streams,
)

#: Raw signing result, kept for the ratio in the end-to-end section of the same run.
_RAW: dict[int, float] = {}
#: Issue 11's targets: uses per second and the four services' CPU per use at TARGET_CLIENTS
#: clients, and one client's p50.
USES_PER_SECOND_TARGET = 500.0
SERVER_CPU_MS_TARGET = 2.5
ONE_CLIENT_P50_MS_TARGET = 6.0
#: A service writes an RPC's log line after its reply: wait this long before reading the logs.
LOG_SETTLE_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class EscrowConfig:
    """Sizes of the organisation-key sections."""

    raw_seconds: float = 2.0
    raw_workers: tuple[int, ...] = (1, 2)
    levels: tuple[int, ...] = (1, 16, 64)
    level_seconds: float = 3.0
    traced_seconds: float = 2.0
    setup_parallelism: int = 8


async def _raw_rate(
    pool: token.SessionPool, key: keys.KeyRecord, workers: int, seconds: float
) -> float:
    digest = hashlib.sha256(b"raw").digest()

    async def sign(_: int) -> None:
        await pool.run(lambda s: keys.sign_digest(s, key, keys.SignMechanism.ECDSA_SHA256, digest))

    started = time.perf_counter()
    samples = await _drive(workers, sign, seconds=seconds)
    return len(samples) / (time.perf_counter() - started)


async def _raw(config: EscrowConfig, pool: token.SessionPool) -> list[Row]:
    record = await pool.run(
        lambda s: keys.generate(s, "raw", keys.Purpose.TICKET, keys.Algorithm.EC_P256)
    )
    rows = []
    for workers in config.raw_workers:
        rate = await _raw_rate(pool, record, workers, config.raw_seconds)
        _RAW[workers] = rate
        rows.append(Row(f"ECDSA P-256 signatures / s, {workers} worker(s)", f"{rate:,.0f}"))
    return rows


def raw_softhsm(config: EscrowConfig) -> Section:
    """Section: ECDSA P-256 signatures per second straight through python-pkcs11."""
    section = Section("raw_softhsm", "Raw SoftHSM2 signing through python-pkcs11 (no gRPC)")
    with tempfile.TemporaryDirectory(prefix="mobilesign-raw-hsm-") as tmp:
        hsm_dir = Path(tmp)
        token.ensure_softhsm_token(hsm_dir, "bench", hsm_dir / "user.pin")
        pool = token.SessionPool(
            HsmProxyConfig().module_path(),
            "bench",
            token.read_pin(hsm_dir / "user.pin"),
            max(config.raw_workers),
            0,
        )
        try:
            section.rows = asyncio.run(_raw(config, pool))
        finally:
            pool.close()
            os.environ.pop("SOFTHSM2_CONF", None)
    section.notes = [
        "through the HSM proxy's own session pool (each worker thread its own PKCS#11 session), "
        "in this process, without gRPC: the ceiling the organisation-key uses are compared with"
    ]
    section.data = {"signatures_per_second": {str(k): v for k, v in _RAW.items()}}
    return section


@dataclasses.dataclass
class _Phone:
    keystore: client.Keystore
    gateway: client.GatewaySession
    signing: client.SigningSession
    grant_id: str
    trust: client.TrustAnchors


async def _gateway_session(
    env: Loopback, keystore: client.Keystore, gateway: str
) -> client.GatewaySession:
    """``keystore``'s device logged in at ``gateway`` (a gateway process's name), on a TLS
    channel of its own."""
    channel = env.deployment.public_channel(gateway)
    env.channels.append(channel)
    session = client.GatewaySession(channel, keystore)
    await session.login()
    return session


async def at_gateway(env: Loopback, phone: _Phone, gateway: str) -> _Phone:
    """``phone`` with a session at ``gateway`` in place of its own (the same signing session,
    key and grant)."""
    return dataclasses.replace(phone, gateway=await _gateway_session(env, phone.keystore, gateway))


async def _phone(
    env: Loopback,
    index: int,
    key_id: str,
    trust: client.TrustAnchors,
    prefix: str = "escrow-bench",
) -> _Phone:
    """A user of its own (``<prefix>-<index>``), enrolled, certified, granted the key's signing
    and logged in."""
    deployment = env.deployment
    user_id = f"{prefix}-{index:03d}"
    async with deployment.channel("ra", "admin") as admin_channel:
        admin = ra_pb2_grpc.AdminServiceStub(admin_channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user_id))
        issued = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id, ttl_seconds=600)
        )
        now = int(time.time())
        grant = (
            await admin.CreateGrant(
                ra_pb2.CreateGrantRequest(
                    user_id=user_id,
                    key_id=key_id,
                    operations=[gateway_pb2.OPERATION_SIGN_DIGEST],
                    not_before_unix=now - 60,
                    not_after_unix=now + 3600,
                    quota_total=1_000_000,
                    quota_daily=1_000_000,
                )
            )
        ).grant
    cosigner = env.channel(len(env.channels))
    keystore = await client.enrol(cosigner, issued.ticket, PIN)
    signing = client.SigningSession(cosigner, keystore, PIN)
    await signing.open()
    certificates, _ = await client.request_personal_certificate(
        cosigner, signing, keystore, issued.ticket, issued.activation_code, trust.ca_certificate
    )
    gateway = await _gateway_session(env, keystore, "gateway")
    trust = dataclasses.replace(trust, grant_key_spki=certificates.grant_key_spki)
    return _Phone(keystore, gateway, signing, grant.grant_id, trust)


def _rpcs(log: Path, offset: int) -> Counter[tuple[str, str]]:
    """A service's RPCs by method and status code, from its JSON log lines after ``offset``."""
    calls: Counter[tuple[str, str]] = Counter()
    with log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("msg") == "rpc":
                calls[str(fields.get("method")), str(fields.get("code"))] += 1
    return calls


@dataclasses.dataclass(frozen=True)
class _Level:
    """One measured window of ``clients`` phones using the organisation key in a loop."""

    clients: int
    seconds: float
    samples_ns: list[int]
    usage: dict[str, Usage]
    rpcs: dict[str, Counter[tuple[str, str]]]
    stream_round_trips: int

    @property
    def uses(self) -> int:
        return len(self.samples_ns)

    @property
    def per_second(self) -> float:
        return self.uses / self.seconds

    @property
    def latency(self) -> Distribution:
        return Distribution.of_ns(self.samples_ns)

    def cpu_ms(self, process: str) -> float:
        return self.usage[process].cpu_seconds / self.uses * 1e3

    @property
    def server_cpu_ms(self) -> float:
        return sum(self.cpu_ms(name) for name in START_ORDER)

    def utilisation(self, *processes: str) -> float:
        return sum(self.usage[name].cpu_seconds for name in processes) / self.seconds

    def switches(self, process: str) -> float:
        return self.usage[process].voluntary_switches / self.uses

    def rpcs_per_use(self, service: str) -> dict[str, float]:
        """The service's RPCs per use by method (a failed call's code added to its name)."""
        per_method: Counter[str] = Counter()
        for (method, code), n in self.rpcs[service].items():
            per_method[method if code == "OK" else f"{method} [{code}]"] += n
        return {method: n / self.uses for method, n in sorted(per_method.items())}

    @property
    def hsm_operations(self) -> dict[str, float]:
        """Successful HSM proxy RPCs per use, by method."""
        calls = self.rpcs["hsm-proxy"]
        return {m: n / self.uses for (m, code), n in sorted(calls.items()) if code == "OK"}

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "uses": self.uses,
            "seconds": self.seconds,
            "uses_per_second": self.per_second,
            "latency": dataclasses.asdict(self.latency),
            "cpu_ms_per_use": {name: self.cpu_ms(name) for name in self.usage},
            "server_cpu_ms_per_use": self.server_cpu_ms,
            "cpu_utilisation": {name: self.utilisation(name) for name in self.usage},
            "voluntary_context_switches_per_use": {n: self.switches(n) for n in self.usage},
            "rpcs_per_use": {name: self.rpcs_per_use(name) for name in START_ORDER},
            "sign_stream_round_trips_per_use": self.stream_round_trips / self.uses,
            "hsm_calls_per_use": self.hsm_operations,
        }


class Meter(Protocol):
    """What :func:`_level` reads each process's usage over its window from."""

    def read(self) -> dict[str, Usage]:
        """Each metered process's usage since the meter was created."""
        ...


async def _level(
    env: Loopback,
    phones: list[_Phone],
    use: Operation,
    seconds: float,
    meter: Callable[[], Meter] | None = None,
) -> _Level:
    """Phones ``0 .. len(phones) - 1`` using the key for ``seconds``, everything metered: the
    processes of ``env.processes`` (the RPCs of those that are services or replicas), or what
    ``meter`` (created as the window starts) reads."""
    services = [name for name in env.processes if name in env.deployment.services]
    logs = {name: env.deployment.services[name].log for name in services}
    offsets = {name: log.stat().st_size for name, log in logs.items()}
    with counting_streams([phone.signing for phone in phones]) as counters:
        meter_in_window = meter() if meter is not None else ProcessMeter(env.processes)
        started = time.perf_counter()
        samples = await _drive(len(phones), use, seconds=seconds)
        elapsed = time.perf_counter() - started
        usage = meter_in_window.read()
    await asyncio.sleep(LOG_SETTLE_SECONDS)
    return _Level(
        clients=len(phones),
        seconds=elapsed,
        samples_ns=samples,
        usage=usage,
        rpcs={name: _rpcs(log, offsets[name]) for name, log in logs.items()},
        stream_round_trips=sum(counter.reads for counter in counters),
    )


async def _fsyncs(
    env: Loopback, clients: int, use: Operation, seconds: float
) -> dict[str, Any] | str:
    """Each service's fsync and fdatasync calls per use, strace attached for ``seconds`` of
    ``clients`` phones' uses; or why they could not be counted."""
    counter = SyscallCounter(
        {name: env.deployment.services[name].process.pid for name in START_ORDER},
        SYNC_SYSCALLS,
    )
    reason = counter.attach()
    if reason is not None:
        return reason
    try:
        started = time.perf_counter()
        uses = len(await _drive(clients, use, seconds=seconds))
        elapsed = time.perf_counter() - started
    finally:
        counts = counter.detach()
    return {
        "clients": clients,
        "uses": uses,
        "uses_per_second_while_traced": uses / elapsed,
        "calls": counts,
        "fsyncs_per_use": {name: sum(c.values()) / uses for name, c in counts.items()},
    }


def _target(clients: int, wanted: int, target: str, met: bool) -> tuple[str, bool | None]:
    """A row's target and status when measured at the ``wanted`` clients the target is for."""
    return (target, met) if clients == wanted else ("", None)


def _clients(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


def _process_table(levels: dict[int, _Level], fsyncs: dict[int, dict[str, Any] | str]) -> Table:
    """Per process: CPU per use at each level, utilisation at the highest, voluntary context
    switches per use at each level, and fsyncs per use in the traced windows."""
    heaviest = levels[max(levels)]
    counted = {c: f["fsyncs_per_use"] for c, f in fsyncs.items() if not isinstance(f, str)}
    table = Table(
        (
            "process",
            *(f"CPU/use @{c}" for c in levels),
            f"util @{heaviest.clients}",
            *(f"vol. switches/use @{c}" for c in levels),
            *(f"fsyncs/use @{c} (traced)" for c in counted),
        ),
        [],
    )
    for name in [*START_ORDER, PHONES]:
        table.rows.append(
            (
                name,
                *(ms(level.cpu_ms(name)) for level in levels.values()),
                f"{heaviest.utilisation(name):.0%}",
                *(f"{level.switches(name):.1f}" for level in levels.values()),
                *(f"{f[name]:.2f}" if name in f else "-" for f in counted.values()),
            )
        )
    table.rows.append(
        (
            "4 services",
            *(ms(level.server_cpu_ms) for level in levels.values()),
            f"{heaviest.utilisation(*START_ORDER):.0%}",
            *(f"{sum(level.switches(n) for n in START_ORDER):.1f}" for level in levels.values()),
            *(f"{sum(f.values()):.2f}" for f in counted.values()),
        )
    )
    return table


def _rpc_table(levels: dict[int, _Level]) -> Table:
    """RPCs per use by serving service and method, and the round trips on the Sign stream."""
    table = Table(("served by", "method", *(f"per use @{c}" for c in levels)), [])
    for service in START_ORDER:
        per_level = [level.rpcs_per_use(service) for level in levels.values()]
        for method in sorted(set().union(*per_level)):
            table.rows.append(
                (service, method, *(f"{calls.get(method, 0.0):.2f}" for calls in per_level))
            )
    table.rows.append(
        (
            "cosigner",
            "(round trips on the open Sign stream)",
            *(f"{level.stream_round_trips / level.uses:.2f}" for level in levels.values()),
        )
    )
    return table


def _rows(levels: dict[int, _Level], fsyncs: dict[int, dict[str, Any] | str]) -> list[Row]:
    """Uses per second at each level, the targets, and the counts per use at the highest."""
    raw = _RAW.get(1, 0.0)
    rows = []
    for clients, level in levels.items():
        target, met = _target(
            clients,
            TARGET_CLIENTS,
            f">= {USES_PER_SECOND_TARGET:g}",
            level.per_second >= USES_PER_SECOND_TARGET,
        )
        note = f"{ratio(level.per_second / raw)} of raw SoftHSM signing (1 worker)" if raw else ""
        rows.append(
            Row(f"uses / s, {_clients(clients)}", f"{level.per_second:,.0f}", target, met, note)
        )
    lightest, heaviest = levels[min(levels)], levels[max(levels)]
    p50 = lightest.latency.p50_ms
    target, met = _target(
        lightest.clients, 1, f"<= {ONE_CLIENT_P50_MS_TARGET:g} ms", p50 <= ONE_CLIENT_P50_MS_TARGET
    )
    rows.append(Row(f"use p50, {_clients(lightest.clients)}", ms(p50), target, met))
    server = heaviest.server_cpu_ms
    target, met = _target(
        heaviest.clients,
        TARGET_CLIENTS,
        f"<= {SERVER_CPU_MS_TARGET:g} ms",
        server <= SERVER_CPU_MS_TARGET,
    )
    rows.append(
        Row(
            f"server CPU / use, {_clients(heaviest.clients)}",
            ms(server),
            target,
            met,
            f"hsm-proxy + ra + gateway + cosigner; phones {ms(heaviest.cpu_ms(PHONES))}",
        )
    )
    for clients, counted in fsyncs.items():
        metric = f"fsyncs / use, {_clients(clients)}"
        if isinstance(counted, str):
            rows.append(Row(metric, "not measured", note=counted))
            continue
        per_service = counted["fsyncs_per_use"]
        rows.append(
            Row(
                metric,
                f"{sum(per_service.values()):.2f}",
                note=", ".join(f"{n} {v:.2f}" for n, v in per_service.items())
                + f" (strace, {counted['uses']} uses at "
                f"{counted['uses_per_second_while_traced']:,.0f}/s while traced)",
            )
        )
    hsm = heaviest.hsm_operations
    rows.append(
        Row(
            f"HSM operations / use, {_clients(heaviest.clients)}",
            f"{sum(hsm.values()):.2f}",
            note="successful HSM proxy RPCs: " + ", ".join(f"{m} {n:.2f}" for m, n in hsm.items()),
        )
    )
    served = {name: sum(heaviest.rpcs_per_use(name).values()) for name in START_ORDER}
    rows.append(
        Row(
            f"RPCs / use, {_clients(heaviest.clients)}",
            f"{sum(served.values()):.2f}",
            note="served by "
            + ", ".join(f"{n} {v:.2f}" for n, v in served.items())
            + f"; and {heaviest.stream_round_trips / heaviest.uses:.2f} round trip(s) on the "
            "phone's open Sign stream",
        )
    )
    switches = {name: heaviest.switches(name) for name in START_ORDER}
    rows.append(
        Row(
            f"voluntary context switches / use, {_clients(heaviest.clients)}",
            f"{sum(switches.values()):.1f}",
            note=", ".join(f"{n} {v:.1f}" for n, v in switches.items())
            + " (in place of database thread hops, see notes)",
        )
    )
    return rows


async def set_up_phones(
    env: Loopback, count: int, parallelism: int, name: str = "bench"
) -> list[_Phone]:
    """An organisation (``name``) with an EC P-256 key, and ``count`` phones enrolled,
    certified, granted the key's use and logged in at the gateway, ``parallelism`` at a time."""
    async with env.deployment.channel("ra", "admin") as admin_channel:
        admin = ra_pb2_grpc.AdminServiceStub(admin_channel)
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id=name, name=name.title())
        )
        key = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id=name,
                    label=f"{name}-seal",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
    async with env.deployment.channel("gateway", "admin") as gateway_channel:
        public = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
        ca = (await public.GetCaCertificate(gateway_pb2.GetCaCertificateRequest())).certificate
        log = await public.GetLogPublicKey(gateway_pb2.GetLogPublicKeyRequest())
    trust = client.TrustAnchors(ca, log.public_key_spki, log.origin)
    prefix = "escrow-bench" if name == "bench" else f"{name}-user"
    phones: list[_Phone] = []
    while len(phones) < count:
        batch = range(len(phones), min(count, len(phones) + parallelism))
        phones.extend(
            await asyncio.gather(*(_phone(env, i, key.key_id, trust, prefix) for i in batch))
        )
    return phones


def use_key(phones: list[_Phone]) -> Operation:
    """The measured operation: phone ``i`` uses the organisation key once, at its gateway
    session's gateway (a digest signed, the receipt verified)."""
    digest = hashlib.sha256(b"a business document").digest()

    async def use(i: int) -> None:
        phone = phones[i]
        await phone.gateway.use_key(
            phone.signing,
            grant_id=phone.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=digest,
            purpose="bench",
            trust=phone.trust,
        )

    return use


async def organisation_key_uses(env: Loopback, config: EscrowConfig | None = None) -> Section:
    """Section: organisation-key uses per second end to end, beside raw SoftHSM signing, with
    each process's CPU and the RPCs, HSM operations, context switches and fsyncs per use."""
    config = config or EscrowConfig()
    section = Section(
        "organisation_key_uses",
        "Organisation-key uses end to end (co-signed record, durable log append, witnessed "
        "checkpoint, HSM check and signature, receipt)",
    )
    phones = await set_up_phones(env, max(config.levels), config.setup_parallelism)
    use = use_key(phones)

    levels = {
        clients: await _level(env, phones[:clients], use, config.level_seconds)
        for clients in config.levels
    }
    fsyncs = {
        clients: await _fsyncs(env, clients, use, config.traced_seconds)
        for clients in sorted({min(levels), max(levels)})
    }
    for phone in phones:
        await phone.signing.close()

    raw = _RAW.get(1, 0.0)
    table = Table(
        (
            "clients",
            "uses/s",
            "p50",
            "p99",
            "uses/s ÷ raw HSM signatures/s",
            "server CPU/use",
            "RPCs/use",
            "HSM calls / use",
        ),
        [],
    )
    for clients, level in levels.items():
        level_latency = level.latency
        table.rows.append(
            (
                str(clients),
                f"{level.per_second:,.1f}",
                ms(level_latency.p50_ms),
                ms(level_latency.p99_ms),
                ratio(level.per_second / raw) if raw else "-",
                ms(level.server_cpu_ms),
                f"{sum(sum(level.rpcs_per_use(n).values()) for n in START_ORDER):.2f}",
                ", ".join(f"{m} {n:.2f}" for m, n in level.hsm_operations.items()),
            )
        )
    section.rows = _rows(levels, fsyncs)
    section.tables = [table, _process_table(levels, fsyncs), _rpc_table(levels)]
    section.notes = [
        "raw = ECDSA P-256 signatures per second through python-pkcs11 with one worker, measured "
        "in this run before the services started; a use needs one organisation-key signature "
        "and a share of one checkpoint signature (one checkpoint covers every use logged before "
        "it)",
        "CPU = user + system time of each process, all threads (/proc/<pid>/stat), over the "
        "measured window, per use; phones = this process (every simulated phone, its gRPC and "
        "TLS, its FROST share and receipt checks), on the same CPUs as the services",
        "RPCs = the JSON 'rpc' log line each service writes per call it serves (phone -> "
        "gateway and service -> service calls alike); the record's co-signature travels on the "
        "phone's Sign stream to the cosigner, opened before the window, counted as round trips",
        "voluntary context switches: all threads of each process (/proc/<pid>/task/*/status), "
        "per use; there is no counter of database thread hops, and every hop (one per "
        "transaction where a repository runs on storage.Database, one per statement where it "
        "uses aiosqlite) hands work to the connection's thread and wakes the caller again, so "
        "these include the hops (and every other blocking wait: locks, sockets, fsync)",
        "fsyncs = fsync + fdatasync calls of each service counted by strace -f -c attached to "
        f"it, in separate windows of {config.traced_seconds:g} s at the lowest and the highest "
        "level after the measured ones (tracing slows the services, so those windows count "
        "and never time)",
    ]
    section.data = {
        "levels": {str(c): level.to_json() for c, level in levels.items()},
        "fsyncs": {
            str(c): f if isinstance(f, dict) else {"not_measured": f} for c, f in fsyncs.items()
        },
        "raw": dict(_RAW),
    }
    return section
