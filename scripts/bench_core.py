"""CPU per party per signature of the sans-I/O FROST core, in one process, without any network.

A two-party DKG makes the key; then each signature runs the four protocol steps in turn, each
timed with ``time.process_time()`` and charged to the party that runs it:

* phone: ``PhoneSigner.request`` + ``PhoneSigner.receive_response`` (which verifies the
  cosigner's share, aggregates and verifies the final signature);
* cosigner: ``CosignerSigner.receive_request`` + ``CosignerSigner.receive_report`` (which
  verifies the reported signature).

Messages are handed over as Python objects: no protobuf, gRPC, TLS or storage is included.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from mobilesign import twoparty
from scripts.bench_common import Row, Section, ms

#: Issue 11's target: at most 0.3 ms of CPU per party per signature.
CPU_TARGET_MS = 0.3


@dataclass(frozen=True)
class CoreConfig:
    """How many signatures to time, in how many batches (the batches show the spread)."""

    signatures: int = 2000
    warmup: int = 100
    batches: int = 4


def dkg() -> tuple[twoparty.KeyPackage, twoparty.KeyPackage]:
    """A fresh 2-of-2 key: the phone's and the cosigner's key packages."""
    phone = twoparty.PhoneKeyGen()
    cosigner = twoparty.CosignerKeyGen()
    cosigner_round1 = cosigner.receive_round1(phone.start())
    phone_round2 = phone.receive_round1(cosigner_round1)
    cosigner_round2 = cosigner.receive_round2(phone_round2)
    confirm, phone_package = phone.receive_round2(cosigner_round2)
    return phone_package, cosigner.receive_confirm(confirm)


def _message(i: int) -> bytes:
    return f"mobilesign bench message {i:010d}".encode().ljust(64, b".")


def _batch(
    phone: twoparty.PhoneSigner, cosigner: twoparty.CosignerSigner, first: int, count: int
) -> tuple[float, float, float]:
    """Sign ``count`` messages; CPU seconds of the phone, of the cosigner, and wall seconds."""
    clock = time.process_time
    phone_cpu = cosigner_cpu = 0.0
    wall = time.perf_counter()
    for i in range(first, first + count):
        t0 = clock()
        request = phone.request(_message(i))
        t1 = clock()
        response = cosigner.receive_request(request)
        t2 = clock()
        report = phone.receive_response(response)
        t3 = clock()
        cosigner.receive_report(report)
        t4 = clock()
        phone_cpu += (t1 - t0) + (t3 - t2)
        cosigner_cpu += (t2 - t1) + (t4 - t3)
    return phone_cpu, cosigner_cpu, time.perf_counter() - wall


def cpu_per_party(config: CoreConfig) -> Section:
    """Section: CPU per party per signature of the FROST core."""
    phone_package, cosigner_package = dkg()
    phone = twoparty.PhoneSigner(phone_package)
    cosigner = twoparty.CosignerSigner(cosigner_package)
    _batch(phone, cosigner, 0, config.warmup)

    per_batch = config.signatures // config.batches
    phone_ms: list[float] = []
    cosigner_ms: list[float] = []
    wall_total = 0.0
    for b in range(config.batches):
        p, c, wall = _batch(phone, cosigner, config.warmup + b * per_batch, per_batch)
        phone_ms.append(p / per_batch * 1e3)
        cosigner_ms.append(c / per_batch * 1e3)
        wall_total += wall
    signed = per_batch * config.batches
    phone_mean = statistics.fmean(phone_ms)
    cosigner_mean = statistics.fmean(cosigner_ms)

    def spread(values: list[float]) -> str:
        return f"batches of {per_batch}: {min(values):.3f} to {max(values):.3f} ms"

    section = Section(
        key="core_cpu",
        title=f"FROST(Ed25519) signing core, CPU per party per signature (in-process, {signed} "
        "signatures, no network)",
    )
    section.rows = [
        Row(
            "phone CPU / signature",
            ms(phone_mean),
            f"<= {CPU_TARGET_MS:g} ms",
            phone_mean <= CPU_TARGET_MS,
            spread(phone_ms),
        ),
        Row(
            "cosigner CPU / signature",
            ms(cosigner_mean),
            f"<= {CPU_TARGET_MS:g} ms",
            cosigner_mean <= CPU_TARGET_MS,
            spread(cosigner_ms),
        ),
        Row(
            "signatures / s, one core, both parties",
            f"{signed / wall_total:,.0f}",
            note="upper bound of the core alone",
        ),
    ]
    section.notes = [
        "phone = request + receive_response (checks the cosigner's share, aggregates, verifies "
        "the signature); cosigner = receive_request + receive_report (verifies the signature)",
    ]
    section.data = {
        "signatures": signed,
        "warmup": config.warmup,
        "phone_cpu_ms_per_signature": phone_mean,
        "cosigner_cpu_ms_per_signature": cosigner_mean,
        "phone_cpu_ms_per_batch": phone_ms,
        "cosigner_cpu_ms_per_batch": cosigner_ms,
        "wall_signatures_per_second": signed / wall_total,
        "includes": "twoparty.PhoneSigner / CosignerSigner only (no protobuf, gRPC, TLS, storage)",
    }
    return section
