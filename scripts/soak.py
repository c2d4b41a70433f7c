"""``make soak``: many phones signing and using an organisation key for minutes, with each
service's memory watched (not part of ``make test``).

The four services start in a fresh temporary state directory (``TMPDIR`` chooses where). Each
client is one phone (enrolled, certified, logged in, with a grant) that alternates, for the whole
run and in one signing session, a personal two-party signature and an organisation-key use
(``GatewaySession.use_key``: co-signed record, log append, witnessed checkpoint, HSM signature,
receipt verified). Every ``--interval`` seconds it prints each service's resident set size
(``VmRSS`` in ``/proc/<pid>/status``); at the end, per service, the least-squares slope of RSS
over time after the warm-up, in KiB per minute, and whether it is flat: ``|slope|`` at most
``--flat-kib-per-minute`` (default 256). The exit status is 1 when any operation failed or any
slope is not flat.

    python -m scripts.soak [--minutes 8] [--clients 64] [--interval 10] [--warmup-minutes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import client
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, ra_pb2, ra_pb2_grpc
from scripts.bench_common import LOAD_TEST_ENV
from scripts.bench_escrow import _Phone, _phone
from scripts.bench_loopback import PIN, Loopback, LoopbackConfig

SETUP_PARALLELISM = 8


@dataclass(frozen=True)
class SoakConfig:
    """How long, how many, how often, and what counts as flat."""

    # Five measured minutes after three of warm-up, in which bounded caches fill (SQLite keeps
    # up to 2 MiB of pages per connection; a database passes that within the first minutes).
    minutes: float = 8.0
    clients: int = 64
    interval_seconds: float = 10.0
    warmup_minutes: float = 3.0
    flat_kib_per_minute: float = 256.0


@dataclass
class _Counts:
    signatures: int = 0
    uses: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread


async def _recover(env: Loopback, phone: _Phone) -> None:
    """After a failure: a pause, then a fresh signing session (the old one may be over)."""
    await asyncio.sleep(1)
    phone.signing.abort()
    channel = env.channel(len(env.channels))
    keystore = phone.signing._keystore  # the phone's own key, kept across sessions
    phone.signing = client.SigningSession(channel, keystore, PIN)
    with contextlib.suppress(client.ClientError):  # counted at the next operation
        await phone.signing.open()


def _say(text: str) -> None:
    print(text, flush=True)


async def _setup(env: Loopback, clients: int) -> list[_Phone]:
    """An organisation key and ``clients`` phones with a grant each."""
    deployment = env.deployment
    async with deployment.channel("ra", "admin") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id="soak", name="Soak Org")
        )
        key = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id="soak",
                    label="soak-seal",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
    async with deployment.channel("gateway", "admin") as channel:
        public = gateway_pb2_grpc.GatewayServiceStub(channel)
        ca = (await public.GetCaCertificate(gateway_pb2.GetCaCertificateRequest())).certificate
        log = await public.GetLogPublicKey(gateway_pb2.GetLogPublicKeyRequest())
    trust = client.TrustAnchors(ca, log.public_key_spki, log.origin)
    phones: list[_Phone] = []
    while len(phones) < clients:
        batch = range(len(phones), min(clients, len(phones) + SETUP_PARALLELISM))
        phones.extend(await asyncio.gather(*(_phone(env, i, key.key_id, trust) for i in batch)))
    return phones


async def _soak(deployment: Deployment, config: SoakConfig) -> tuple[int, dict[str, object]]:
    env = Loopback(deployment, LoopbackConfig())
    started = time.perf_counter()
    phones = await _setup(env, config.clients)
    _say(f"{len(phones)} phones enrolled and logged in in {time.perf_counter() - started:.1f} s")
    pids = {name: deployment.services[name].process.pid for name in START_ORDER}
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in START_ORDER}
    counts = _Counts()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    deadline = begin + 60 * config.minutes

    async def worker(i: int) -> None:
        phone = phones[i]
        n = 0
        while loop.time() < deadline:
            message = f"soak client {i:03d} message {n:010d}".encode()
            try:
                await phone.signing.sign(message)
                counts.signatures += 1
                await phone.gateway.use_key(
                    phone.signing,
                    grant_id=phone.grant_id,
                    operation=gateway_pb2.OPERATION_SIGN_DIGEST,
                    data=message.ljust(32, b".")[:32],
                    purpose="soak",
                    trust=phone.trust,
                )
                counts.uses += 1
            except client.ClientError as exc:
                counts.errors[exc.reason] += 1
                await _recover(env, phone)
            except Exception as exc:  # any failure is counted and reported
                counts.errors[type(exc).__name__] += 1
                await _recover(env, phone)
            n += 1

    def sample() -> str:
        t = loop.time() - begin
        parts = []
        for name, pid in pids.items():
            kib = rss_kib(pid)
            samples[name].append((t, kib))
            parts.append(f"{name} {kib / 1024:7.1f} MiB")
        return (
            f"{t:6.0f} s  signatures {counts.signatures:7d}  uses {counts.uses:7d}  "
            f"errors {sum(counts.errors.values()):3d}  |  " + "  ".join(parts)
        )

    async def sampler() -> None:
        while True:
            _say(sample())
            await asyncio.sleep(config.interval_seconds)

    watch = asyncio.create_task(sampler())
    await asyncio.gather(*(worker(i) for i in range(len(phones))))
    watch.cancel()
    _say(sample())
    elapsed = loop.time() - begin
    recorded_ok = True
    for phone in phones:
        try:
            await phone.signing.close()  # RECORD_MISMATCH unless every signature was recorded
        except client.ClientError as exc:
            counts.errors[exc.reason] += 1
            recorded_ok = False
    await env.close(failed=False)

    warmup = 60 * config.warmup_minutes
    flat_all = True
    _say("")
    _say(
        f"{elapsed:.0f} s, {config.clients} clients: {counts.signatures} signatures "
        f"({counts.signatures / elapsed:.1f}/s), {counts.uses} organisation-key uses "
        f"({counts.uses / elapsed:.1f}/s), {sum(counts.errors.values())} errors"
        + (f" {dict(counts.errors)}" if counts.errors else "")
    )
    _say(
        f"RSS slope per service after a {config.warmup_minutes:g}-minute warm-up "
        f"(least squares; flat = |slope| <= {config.flat_kib_per_minute:g} KiB/min):"
    )
    report: dict[str, object] = {}
    for name in START_ORDER:
        after = [(t, v) for t, v in samples[name] if t >= warmup]
        slope = slope_per_minute(after)
        flat = abs(slope) <= config.flat_kib_per_minute and len(after) >= 2
        flat_all &= flat
        first, last = samples[name][0][1], samples[name][-1][1]
        _say(
            f"  {name:10s} {slope:+9.1f} KiB/min  {'flat' if flat else 'NOT FLAT'}  "
            f"(RSS {first / 1024:.1f} -> {last / 1024:.1f} MiB, {len(after)} samples)"
        )
        report[name] = {"slope_kib_per_minute": slope, "flat": flat, "samples": samples[name]}
    if not recorded_ok:
        _say("the cosigner did not record every signature of a session")
    out = {
        "config": config.__dict__,
        "seconds": elapsed,
        "signatures": counts.signatures,
        "uses": counts.uses,
        "errors": dict(counts.errors),
        "services": report,
    }
    return (0 if flat_all and not counts.errors and recorded_ok else 1), out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=SoakConfig.minutes)
    parser.add_argument("--clients", type=int, default=SoakConfig.clients)
    parser.add_argument("--interval", type=float, default=SoakConfig.interval_seconds)
    parser.add_argument("--warmup-minutes", type=float, default=SoakConfig.warmup_minutes)
    parser.add_argument("--flat-kib-per-minute", type=float, default=SoakConfig.flat_kib_per_minute)
    args = parser.parse_args()
    config = SoakConfig(
        args.minutes, args.clients, args.interval, args.warmup_minutes, args.flat_kib_per_minute
    )
    with tempfile.TemporaryDirectory(prefix="mobilesign-soak-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        # One signing session per phone for the whole run, longer than the default idle limit
        # between two steps on a loaded machine.
        deployment = Deployment(state, extra_env=dict(LOAD_TEST_ENV))
        _say(f"starting hsm-proxy, ra, gateway and cosigner (state in {state})")
        try:
            deployment.start_all()
            status, out = asyncio.run(_soak(deployment, config))
        finally:
            deployment.stop_all()
    Path("bench-out").mkdir(exist_ok=True)
    Path("bench-out/soak.json").write_text(json.dumps(out, indent=2) + "\n")
    _say("written to bench-out/soak.json")
    sys.exit(status)


if __name__ == "__main__":
    main()
