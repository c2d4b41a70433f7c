"""Organisation-key uses end to end, beside raw SoftHSM signing through python-pkcs11.

* **raw**: ECDSA P-256 signatures of 32-byte digests straight through python-pkcs11 on a
  SoftHSM2 token of this process's own (temporary), with one session per worker thread, at 1 and
  at 2 concurrent workers (this machine's ceiling for the token).
* **end to end**: each use is ``GatewaySession.use_key`` from a phone: PrepareOperation (session,
  certificate and grant checked, record built), the record co-signed with the cosigner (one FROST
  round trip), ExecuteOperation (user signature verified, quota consumed and the record appended
  to the audit log in one durable transaction, the gateway's authorisation signed in the HSM, the
  HSM proxy's check next to the key, the organisation key's ECDSA signature, the outcome logged,
  a checkpoint signed in the HSM), and the phone verifying the receipt. Each use costs the HSM
  three ECDSA signatures (authorisation, organisation key, checkpoint) when the tree has grown.
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
from pathlib import Path

import client
from hsm_proxy import keys, token
from hsm_proxy.config import HsmProxyConfig
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, ra_pb2, ra_pb2_grpc
from scripts.bench_common import Row, Section, Table, ms, ratio
from scripts.bench_loopback import PIN, Loopback, _drive

#: Raw signing result, kept for the ratio in the end-to-end section of the same run.
_RAW: dict[int, float] = {}


@dataclasses.dataclass(frozen=True)
class EscrowConfig:
    """Sizes of the organisation-key sections."""

    raw_seconds: float = 2.0
    raw_workers: tuple[int, ...] = (1, 2)
    levels: tuple[int, ...] = (1, 16, 64)
    level_seconds: float = 3.0
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
    gateway: client.GatewaySession
    signing: client.SigningSession
    grant_id: str
    trust: client.TrustAnchors


async def _phone(env: Loopback, index: int, key_id: str, trust: client.TrustAnchors) -> _Phone:
    deployment = env.deployment
    user_id = f"escrow-bench-{index:03d}"
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
    gateway_channel = deployment.public_channel("gateway")
    env.channels.append(gateway_channel)
    certificates, _ = await client.request_personal_certificate(
        cosigner, signing, keystore, issued.ticket, issued.activation_code, trust.ca_certificate
    )
    gateway = client.GatewaySession(gateway_channel, keystore)
    await gateway.login()
    trust = dataclasses.replace(trust, grant_key_spki=certificates.grant_key_spki)
    return _Phone(gateway, signing, grant.grant_id, trust)


def _hsm_calls(log: Path, offset: int) -> Counter[str]:
    """Successful HSM proxy RPCs by method, from its JSON log lines written after ``offset``."""
    calls: Counter[str] = Counter()
    with log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("msg") == "rpc" and fields.get("code") == "OK":
                calls[str(fields.get("method"))] += 1
    return calls


async def organisation_key_uses(env: Loopback, config: EscrowConfig | None = None) -> Section:
    """Section: organisation-key uses per second end to end, beside raw SoftHSM signing."""
    config = config or EscrowConfig()
    section = Section(
        "organisation_key_uses",
        "Organisation-key uses end to end (co-signed record, durable log append, witnessed "
        "checkpoint, HSM check and signature, receipt)",
    )
    async with env.deployment.channel("ra", "admin") as admin_channel:
        admin = ra_pb2_grpc.AdminServiceStub(admin_channel)
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id="bench", name="Bench Org")
        )
        key = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id="bench",
                    label="bench-seal",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
    async with env.deployment.channel("gateway", "admin") as gateway_channel:
        public = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
        ca = (await public.GetCaCertificate(gateway_pb2.GetCaCertificateRequest())).certificate
        log = await public.GetLogPublicKey(gateway_pb2.GetLogPublicKeyRequest())
    trust = client.TrustAnchors(ca, log.public_key_spki, log.origin)
    phones: list[_Phone] = []
    needed = max(config.levels)
    while len(phones) < needed:
        batch = range(len(phones), min(needed, len(phones) + config.setup_parallelism))
        phones.extend(await asyncio.gather(*(_phone(env, i, key.key_id, trust) for i in batch)))
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

    raw = _RAW.get(1, 0.0)
    table = Table(
        ("clients", "uses/s", "p50", "p99", "uses/s ÷ raw HSM signatures/s", "HSM calls / use"), []
    )
    results = {}
    hsm_log = env.deployment.services["hsm-proxy"].log
    for clients in config.levels:
        offset = hsm_log.stat().st_size
        started = time.perf_counter()
        samples = await _drive(clients, use, seconds=config.level_seconds)
        elapsed = time.perf_counter() - started
        calls = _hsm_calls(hsm_log, offset)
        rate = len(samples) / elapsed
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2] / 1e6
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6
        per_use = {method: n / len(samples) for method, n in sorted(calls.items())}
        results[clients] = {
            "uses_per_second": rate,
            "p50_ms": p50,
            "p99_ms": p99,
            "hsm_calls_per_use": per_use,
        }
        section.rows.append(
            Row(
                f"uses / s, {clients} client(s)",
                f"{rate:,.0f}",
                note=f"{ratio(rate / raw)} of raw SoftHSM signing (1 worker)" if raw else "",
            )
        )
        table.rows.append(
            (
                str(clients),
                f"{rate:,.1f}",
                ms(p50),
                ms(p99),
                ratio(rate / raw) if raw else "-",
                ", ".join(f"{m} {n:.2f}" for m, n in per_use.items()),
            )
        )
    for phone in phones:
        await phone.signing.close()
    section.tables.append(table)
    section.notes = [
        "raw = ECDSA P-256 signatures per second through python-pkcs11 with one worker, measured "
        "in this run before the services started; a use needs one organisation-key signature "
        "and a share of one checkpoint signature (one checkpoint covers every use logged before "
        "it)",
    ]
    section.data = {"levels": {str(k): v for k, v in results.items()}, "raw": dict(_RAW)}
    return section
