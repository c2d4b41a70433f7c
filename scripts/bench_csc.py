"""CSC ``signatures/signHash`` calls per second with approval on simulated phones, beside the
gRPC path measured in the same deployment and run.

Each client is an application registered (``RegisterApplication``) for one phone's grant, with
its own OAuth token and HTTPS connection to the gateway's CSC endpoint. One signature is
``credentials/authorize`` for one hash in the asynchronous form (202 and a ``responseID``),
``credentials/authorizeCheck`` polled until the SAD comes, then ``signatures/signHash``. The
phone of that grant's user runs a :class:`client.approver.Approver`, which polls its pending
approvals and approves each: it prepares the record, co-signs it with the cosigner (FROST, on
the phone's open Sign stream) and hands it back; signHash then runs it as any organisation-key
use (durable log append, witnessed checkpoint, the HSM proxy's checks and signature).

The gRPC path beside it is the same phones calling ``GatewaySession.use_key`` (as in
:mod:`scripts.bench_escrow`) at the same client counts, measured just before the CSC window of
each level, so that the ratio compares like with like. A phone's approver runs only in the CSC
windows of the levels that include it. Then one client goes through the same steps without
polling (the phone lists and approves right after authorize, the application checks once): the
approval round trip alone, and the floor under the polled latency.

Runs alone too, in a deployment of its own: ``.venv/bin/python -m scripts.bench_csc``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from client import csc_seal
from client.approver import Approver
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import (
    csc_pb2,
    csc_pb2_grpc,
)
from scripts import bench_common, bench_loopback
from scripts.bench_common import (
    LOAD_TEST_ENV,
    SYNC_SYSCALLS,
    Distribution,
    Row,
    Section,
    SyscallCounter,
    Table,
    ms,
    ratio,
)
from scripts.bench_escrow import (
    LOG_SETTLE_SECONDS,
    _Phone,
    set_up_phones,
    use_key,
)
from scripts.bench_loopback import PHONES, Loopback, Operation, Run, _drive, _measure

ECDSA_SHA256 = "1.2.840.10045.4.3.2"
#: The parts of one CSC signature, timed separately.
PHASES = ("authorize", "approval wait", "signHash")
#: The steps of the poll-free run.
DIRECT = ("approval round trip", "authorize -> signature")
#: An application gives up on a signature not approved in this time (the phone failed).
APPROVAL_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class CscConfig:
    """Sizes of the CSC section."""

    levels: tuple[int, ...] = (1, 16)
    level_seconds: float = 3.0
    warmup_seconds: float = 0.3
    #: How often an application polls authorizeCheck, and a phone its pending approvals.
    poll_seconds: float = 0.02
    #: Seconds of each strace window counting fsyncs (at the highest level, after the others).
    traced_seconds: float = 2.0
    #: Signatures of the poll-free run (one client, one at a time).
    direct_samples: int = 30
    setup_parallelism: int = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclasses.dataclass
class _Client:
    """An application registered for one phone's grant, with its token and HTTP client, and
    that phone's approver."""

    phone: _Phone
    approver: Approver
    http: aiohttp.ClientSession
    base_url: str
    token: str
    signed: int = 0

    async def call(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A CSC method with the application's token (a refusal raises)."""
        return await csc_seal.call(self.http, f"{self.base_url}/csc/v2/{method}", body, self.token)

    def next_digest(self) -> bytes:
        """A fresh document hash."""
        self.signed += 1
        return hashlib.sha256(f"{self.phone.grant_id} document {self.signed}".encode()).digest()

    async def authorize(self, digest: bytes) -> str:
        """``credentials/authorize`` for ``digest`` in the asynchronous form: the responseID."""
        status, answer = await self.call(
            "credentials/authorize",
            {
                "credentialID": self.phone.grant_id,
                "numSignatures": 1,
                "hashes": [_b64(digest)],
                "hashAlgorithmOID": csc_seal.SHA256,
                "description": "bench",
                "operationMode": "A",
            },
        )
        if status != 202:
            raise RuntimeError(f"credentials/authorize answered {status}, not 202")
        return str(answer["responseID"])

    async def check(self, response_id: str) -> str | None:
        """``credentials/authorizeCheck``: the SAD once approved, None while pending."""
        status, answer = await self.call("credentials/authorizeCheck", {"responseID": response_id})
        return str(answer["SAD"]) if status == 200 else None

    async def sign_hash(self, sad: str, digest: bytes) -> None:
        """``signatures/signHash`` of ``digest`` with ``sad`` (one signature back)."""
        _, answer = await self.call(
            "signatures/signHash",
            {
                "credentialID": self.phone.grant_id,
                "SAD": sad,
                "hashes": [_b64(digest)],
                "hashAlgorithmOID": csc_seal.SHA256,
                "signAlgo": ECDSA_SHA256,
            },
        )
        if len(answer["signatures"]) != 1:
            raise RuntimeError("signHash did not give one signature")


@contextlib.asynccontextmanager
async def _clients(env: Loopback, config: CscConfig) -> AsyncIterator[list[_Client]]:
    """One application per phone, registered for its grant, with a token; HTTP clients closed
    and signing sessions ended afterwards."""
    deployment = env.deployment
    phones = await set_up_phones(
        env, max(config.levels), config.setup_parallelism, name="bench-csc"
    )
    base_url = f"https://{deployment.address('gateway', 'csc')}"
    ca_pem = str(devpki.ensure(deployment.state_dir) / "ca.pem")
    clients: list[_Client] = []
    try:
        async with deployment.channel("gateway") as channel:
            admin = csc_pb2_grpc.CscAdminServiceStub(channel)
            for i, phone in enumerate(phones):
                registered = await admin.RegisterApplication(
                    csc_pb2.RegisterApplicationRequest(
                        name=f"CSC bench {i:03d}", grant_ids=[phone.grant_id]
                    )
                )
                http = csc_seal.http_session(ca_pem)
                approver = Approver(
                    phone.gateway,
                    phone.signing,
                    phone.trust,
                    lambda _: True,
                    poll_seconds=config.poll_seconds,
                )
                # Appended before the token is asked for, so that its HTTP client is closed
                # whatever happens.
                clients.append(_Client(phone, approver, http, base_url, token=""))
                clients[-1].token = await csc_seal.access_token(
                    http, base_url, registered.application.client_id, registered.client_secret
                )
        yield clients
    finally:
        for each in clients:
            await each.http.close()
        for phone in phones:
            await phone.signing.close()


def _sign_hash(
    clients: list[_Client], poll_seconds: float, phases: dict[str, list[int]]
) -> Operation:
    """The measured operation: client ``i`` gets one hash authorised on its phone and signed;
    each phase's duration goes into ``phases``."""

    async def sign(i: int) -> None:
        each = clients[i]
        digest = each.next_digest()
        started = time.perf_counter_ns()
        response_id = await each.authorize(digest)
        asked = time.perf_counter_ns()
        deadline = time.monotonic() + APPROVAL_TIMEOUT_SECONDS
        sad = None
        while sad is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the phone did not approve in time")
            await asyncio.sleep(poll_seconds)
            sad = await each.check(response_id)
        authorised = time.perf_counter_ns()
        await each.sign_hash(sad, digest)
        done = time.perf_counter_ns()
        for phase, ns in zip(
            PHASES, (asked - started, authorised - asked, done - authorised), strict=True
        ):
            phases[phase].append(ns)

    return sign


def _gateway_calls(log: Path, offset: int) -> Counter[str]:
    """The gateway's gRPC calls by method and CSC requests by path, from its JSON log lines
    after ``offset`` (a failure's code or HTTP status added to the name)."""
    calls: Counter[str] = Counter()
    with log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("msg") == "rpc":
                method, code = str(fields.get("method")), fields.get("code")
                calls[method if code == "OK" else f"{method} [{code}]"] += 1
            elif fields.get("msg") == "csc":
                path, status = str(fields.get("path")), fields.get("status")
                calls[path if status in (200, 202) else f"{path} [HTTP {status}]"] += 1
    return calls


@dataclasses.dataclass(frozen=True)
class _Level:
    """Both paths at one client count."""

    clients: int
    grpc: Run
    csc: Run
    phases: dict[str, Distribution]
    gateway_calls: Counter[str]
    approver_failures: int

    @property
    def ratio(self) -> float:
        return self.csc.per_second / self.grpc.per_second

    def calls_per_signature(self) -> dict[str, float]:
        return {k: n / self.csc.operations for k, n in sorted(self.gateway_calls.items())}

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "csc": {
                **self.csc.to_json(),
                "server_cpu_ms_per_op": _server_cpu_ms(self.csc),
                "phases": {k: dataclasses.asdict(d) for k, d in self.phases.items()},
                "gateway_calls_per_signature": self.calls_per_signature(),
                "approver_failures": self.approver_failures,
            },
            "grpc": {**self.grpc.to_json(), "server_cpu_ms_per_op": _server_cpu_ms(self.grpc)},
            "csc_per_second_over_grpc": self.ratio,
        }


def _server_cpu_ms(run: Run) -> float:
    return sum(run.cpu_ms_per_op(name) for name in START_ORDER)


@contextlib.asynccontextmanager
async def _approving(clients: list[_Client]) -> AsyncIterator[None]:
    """The clients' phones approving while the block runs."""
    async with contextlib.AsyncExitStack() as stack:
        for each in clients:
            await stack.enter_async_context(each.approver.running())
        yield


async def _level(env: Loopback, clients: list[_Client], config: CscConfig) -> _Level:
    """The gRPC path, then the CSC path with the clients' phones approving, each warmed up."""
    count = len(clients)
    use = use_key([each.phone for each in clients])
    await _drive(count, use, seconds=config.warmup_seconds)
    grpc_run = await _measure(env, count, use, seconds=config.level_seconds, count=None)

    phases: dict[str, list[int]] = {phase: [] for phase in PHASES}
    sign = _sign_hash(clients, config.poll_seconds, phases)
    failures = sum(len(each.approver.failed) for each in clients)
    log = env.deployment.services["gateway"].log
    async with _approving(clients):
        await _drive(count, sign, seconds=config.warmup_seconds)
        for samples in phases.values():
            samples.clear()
        offset = log.stat().st_size
        csc_run = await _measure(env, count, sign, seconds=config.level_seconds, count=None)
    await asyncio.sleep(LOG_SETTLE_SECONDS)
    return _Level(
        clients=count,
        grpc=grpc_run,
        csc=csc_run,
        phases={phase: Distribution.of_ns(samples) for phase, samples in phases.items()},
        gateway_calls=_gateway_calls(log, offset),
        approver_failures=sum(len(each.approver.failed) for each in clients) - failures,
    )


async def _fsyncs(
    env: Loopback, clients: list[_Client], config: CscConfig
) -> dict[str, dict[str, float]] | str:
    """Each service's fsync and fdatasync calls per use on the gRPC path, then per signature on
    the CSC path, strace attached for ``traced_seconds`` each; or why they could not be
    counted."""
    paths = {
        "grpc": use_key([each.phone for each in clients]),
        "csc": _sign_hash(clients, config.poll_seconds, {phase: [] for phase in PHASES}),
    }
    pids = {name: env.deployment.services[name].process.pid for name in START_ORDER}
    counted: dict[str, dict[str, float]] = {}
    for path, op in paths.items():
        async with _approving(clients if path == "csc" else []):
            counter = SyscallCounter(pids, SYNC_SYSCALLS)
            reason = counter.attach()
            if reason is not None:
                return reason
            try:
                done = len(await _drive(len(clients), op, seconds=config.traced_seconds))
            finally:
                counts = counter.detach()
        counted[path] = {name: sum(calls.values()) / done for name, calls in counts.items()}
    return counted


async def _direct(each: _Client, samples: int) -> dict[str, Distribution]:
    """One signature at a time with no polling: the phone lists and approves as soon as
    authorize has answered, the application checks once."""
    timings: dict[str, list[int]] = {step: [] for step in DIRECT}
    for _ in range(samples):
        digest = each.next_digest()
        started = time.perf_counter_ns()
        response_id = await each.authorize(digest)
        asked = time.perf_counter_ns()
        (approval,) = await each.phone.gateway.approvals()
        await each.phone.gateway.approve(each.phone.signing, approval, trust=each.phone.trust)
        approved = time.perf_counter_ns()
        sad = await each.check(response_id)
        if sad is None:
            raise RuntimeError("approved, yet authorizeCheck gave no SAD")
        await each.sign_hash(sad, digest)
        done = time.perf_counter_ns()
        timings["approval round trip"].append(approved - asked)
        timings["authorize -> signature"].append(done - started)
    return {step: Distribution.of_ns(ns) for step, ns in timings.items()}


def _client_count(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


def _rows(
    levels: dict[int, _Level],
    direct: dict[str, Distribution],
    fsyncs: dict[str, dict[str, float]] | str,
) -> list[Row]:
    rows = []
    for n, level in levels.items():
        rows.append(
            Row(
                f"signHash / s, {_client_count(n)}",
                f"{level.csc.per_second:,.1f}",
                note=f"{ratio(level.ratio)} the gRPC path's {level.grpc.per_second:,.1f} uses/s "
                "in the same run",
            )
        )
    for n, level in levels.items():
        rows.append(
            Row(
                f"authorize -> signature p50, {_client_count(n)}",
                ms(level.csc.latency.p50_ms),
                note=", ".join(f"{p} {ms(d.p50_ms)}" for p, d in level.phases.items())
                + f" (p50s); gRPC use p50 {ms(level.grpc.latency.p50_ms)}",
            )
        )
    round_trip, whole = direct["approval round trip"], direct["authorize -> signature"]
    rows.append(
        Row(
            "approval round trip, no polling, 1 client",
            ms(round_trip.p50_ms),
            note="p50 of ListApprovals, PrepareOperation, co-signing, Approve, "
            f"{round_trip.count} samples",
        )
    )
    rows.append(Row("authorize -> signature, no polling, 1 client", ms(whole.p50_ms), note="p50"))
    heaviest = levels[max(levels)]
    rows.append(
        Row(
            f"server CPU / signature, {_client_count(heaviest.clients)}",
            ms(_server_cpu_ms(heaviest.csc)),
            note=f"gRPC path {ms(_server_cpu_ms(heaviest.grpc))} per use; gateway "
            f"{ms(heaviest.csc.cpu_ms_per_op('gateway'))} (gRPC path "
            f"{ms(heaviest.grpc.cpu_ms_per_op('gateway'))})",
        )
    )
    calls = heaviest.calls_per_signature()
    rows.append(
        Row(
            f"gateway calls / signature, {_client_count(heaviest.clients)}",
            f"{sum(calls.values()):.1f}",
            note=", ".join(f"{name.removeprefix('/csc/v2/')} {v:.2f}" for name, v in calls.items()),
        )
    )
    metric = f"fsyncs / signature, {_client_count(heaviest.clients)}"
    if isinstance(fsyncs, str):
        rows.append(Row(metric, "not measured", note=fsyncs))
    else:
        csc, grpc = fsyncs["csc"], fsyncs["grpc"]
        rows.append(
            Row(
                metric,
                f"{sum(csc.values()):.2f}",
                note=", ".join(f"{name} {n:.2f}" for name, n in csc.items())
                + f"; gRPC path {sum(grpc.values()):.2f} per use (gateway {grpc['gateway']:.2f})"
                " (strace, separate windows)",
            )
        )
    failures = sum(level.approver_failures for level in levels.values())
    if failures:
        rows.append(Row("approvals the gateway refused", str(failures), note="see approver.failed"))
    return rows


def _table(levels: dict[int, _Level]) -> Table:
    table = Table(
        (
            "clients",
            "signHash/s",
            "gRPC uses/s",
            "CSC ÷ gRPC",
            "CSC p50",
            "CSC p99",
            "gRPC p50",
            "server CPU/sig CSC",
            "gRPC",
            "gateway CPU/sig CSC",
            "gRPC",
            "gateway util CSC",
            "gRPC",
            "bench process util CSC",
        ),
        [],
    )
    for n, level in levels.items():
        csc, grpc = level.csc, level.grpc
        table.rows.append(
            (
                str(n),
                f"{csc.per_second:,.1f}",
                f"{grpc.per_second:,.1f}",
                ratio(level.ratio),
                ms(csc.latency.p50_ms),
                ms(csc.latency.p99_ms),
                ms(grpc.latency.p50_ms),
                ms(_server_cpu_ms(csc)),
                ms(_server_cpu_ms(grpc)),
                ms(csc.cpu_ms_per_op("gateway")),
                ms(grpc.cpu_ms_per_op("gateway")),
                f"{csc.utilisation('gateway'):.0%}",
                f"{grpc.utilisation('gateway'):.0%}",
                f"{csc.utilisation(PHONES):.0%}",
            )
        )
    return table


async def csc_sign_hash(env: Loopback, config: CscConfig | None = None) -> Section:
    """Section: CSC signHash calls per second (authorize, approval on the phone, signHash) at
    each client count, beside the gRPC path's uses per second in the same deployment."""
    config = config or CscConfig()
    section = Section(
        "csc_sign_hash",
        "CSC signHash calls per second with approval on simulated phones beside the gRPC path",
    )
    async with _clients(env, config) as clients:
        levels = {n: await _level(env, clients[:n], config) for n in config.levels}
        fsyncs = await _fsyncs(env, clients[: max(config.levels)], config)
        direct = await _direct(clients[0], config.direct_samples)
    section.rows = _rows(levels, direct, fsyncs)
    section.tables = [_table(levels)]
    section.notes = [
        f"polling: each application polls credentials/authorizeCheck every "
        f"{config.poll_seconds:g} s and each phone ListApprovals every {config.poll_seconds:g} s "
        "(client.approver.Approver); a polled signature waits on average about half of each "
        "interval on top of the work, the poll-free run shows the floor; 'approval wait' runs "
        "from authorize's 202 to the SAD in hand, the authorizeCheck calls included",
        "one signature = credentials/authorize (operationMode A, one hash) -> authorizeCheck "
        "until the SAD -> signatures/signHash, each application its own OAuth token and HTTPS "
        "connection, one registered application and one phone (its own user, grant and open "
        "Sign stream) per client; the application does not verify the signature, the gRPC "
        "path's phone verifies each receipt",
        "gRPC path = the same phones' GatewaySession.use_key measured just before the CSC "
        f"window at each level, {config.level_seconds:g} s each after "
        f"{config.warmup_seconds:g} s of warm-up; a phone's approver runs only in CSC windows",
        "fsyncs = fsync + fdatasync calls of each service counted by strace -f -c, in separate "
        f"windows of {config.traced_seconds:g} s per path at the highest level after the measured "
        "ones (tracing slows the services: those windows count and never time)",
        "CPU = user + system time of each process over the window, per signature or use; the "
        "bench process holds every simulated phone and application",
        "gateway calls = its JSON 'rpc' (gRPC) and 'csc' (HTTP) log lines over the CSC window, "
        "the phones' ListApprovals polls included (a poll in flight when the window's approvers "
        "stop ends CANCELLED, or INVALID_ARGUMENT when cancelled before its message was read)",
    ]
    section.data = {
        "poll_seconds": config.poll_seconds,
        "levels": {str(n): level.to_json() for n, level in levels.items()},
        "direct": {step: dataclasses.asdict(d) for step, d in direct.items()},
        "fsyncs_per_operation": fsyncs if isinstance(fsyncs, dict) else {"not_measured": fsyncs},
    }
    return section


def main(argv: list[str] | None = None) -> None:
    """Run the CSC section alone, in a deployment of its own, and print it."""
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_csc", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per level and path")
    parser.add_argument("--poll", type=float, default=0.02, help="poll interval in seconds")
    args = parser.parse_args(argv)
    config = CscConfig(level_seconds=args.seconds, poll_seconds=args.poll)
    with tempfile.TemporaryDirectory(prefix="mobilesign-bench-csc-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        deployment = Deployment(state, extra_env=dict(LOAD_TEST_ENV))
        deployment.start_all()
        try:
            halves = bench_common.split_cpus()
            if halves is not None:  # as make bench places them
                bench_common.pin_process(deployment.services["cosigner"].process.pid, halves[1])
                bench_common.pin_process(os.getpid(), halves[0])
            (section,) = asyncio.run(
                bench_loopback.run(
                    deployment,
                    bench_loopback.LoopbackConfig(),
                    [lambda env: csc_sign_hash(env, config)],
                )
            )
        finally:
            deployment.stop_all()
    # Imported here: scripts.bench imports this module.
    from scripts.bench import _format_section

    print("\n".join(_format_section(section)), flush=True)


if __name__ == "__main__":
    main()
