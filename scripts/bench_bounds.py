"""What bounds the performance targets, from figures measured earlier in the same run.

A section of its own, computed after the others from their ``data``: for the signing latency,
the sum of the steps a signature cannot avoid (one round trip, the durable record made before
the share leaves, both parties' FROST work); for the cosigner's CPU, what is left of it beside
the FROST core, next to a plain unary call's; for the organisation-key uses, the rate the
machine's cores allow at the CPU each use costs all processes. No new measurement is made here.
"""

from __future__ import annotations

import os
from typing import Any

from scripts.bench_common import Row, Section, ms, ratio
from scripts.bench_escrow import SERVER_CPU_MS_TARGET, USES_PER_SECOND_TARGET
from scripts.bench_loopback import (
    COSIGNER_CPU_MS_TARGET,
    LATENCY_RATIO_TARGET,
    PHONES,
    TARGET_CLIENTS,
)


def _data(sections: list[Section], key: str) -> dict[str, Any] | None:
    found = next((s for s in sections if s.key == key), None)
    return None if found is None else found.data


def _signing(sections: list[Section]) -> list[Row]:
    core, disk, latency = (_data(sections, k) for k in ("core_cpu", "durable_write", "latency"))
    if core is None or disk is None or latency is None:
        return []
    echo_ms = latency["echo"]["latency"]["p50_ms"]
    sign_ms = latency["sign"]["latency"]["p50_ms"]
    fsync_ms = disk["latency"]["p50_ms"]
    frost_ms = core["phone_cpu_ms_per_signature"] + core["cosigner_cpu_ms_per_signature"]
    steps = echo_ms + fsync_ms + frost_ms
    return [
        Row(
            "signing p50, its steps in sequence: echo p50 + write+fsync p50 + both FROST parts",
            ms(steps),
            note=f"{ms(echo_ms)} + {ms(fsync_ms)} + {ms(frost_ms)}; measured sign p50 "
            f"{ms(sign_ms)}",
        ),
        Row(
            "those steps / echo p50",
            ratio(steps / echo_ms),
            note=f"the target ({LATENCY_RATIO_TARGET:g}x) leaves "
            f"{ms(LATENCY_RATIO_TARGET * echo_ms - echo_ms)} beside the round trip for the "
            "durable record and the maths together",
        ),
    ]


def _cosigner(sections: list[Section]) -> list[Row]:
    core, throughput = _data(sections, "core_cpu"), _data(sections, "throughput")
    if core is None or throughput is None:
        return []
    level = next((lv for lv in throughput["levels"] if lv["clients"] == TARGET_CLIENTS), None)
    if level is None:
        return []
    sign_ms = level["sign"]["cpu_ms_per_op"]["cosigner"]
    echo_ms = level["echo"]["cpu_ms_per_op"]["cosigner"]
    frost_ms = core["cosigner_cpu_ms_per_signature"]
    rest = sign_ms - frost_ms
    return [
        Row(
            f"cosigner CPU / signature beside its FROST core ({TARGET_CLIENTS} clients)",
            ms(rest),
            note=f"{ms(sign_ms)} - {ms(frost_ms)}: the Sign stream's three messages, the durable "
            f"records, Python; a plain unary call costs the cosigner {ms(echo_ms)} "
            f"({ratio(rest / echo_ms)} of it)",
        ),
        Row(
            "cosigner CPU / signature at FROST + one plain call",
            ms(frost_ms + echo_ms),
            note=f"against the target {COSIGNER_CPU_MS_TARGET:g} ms",
        ),
    ]


def _uses(sections: list[Section]) -> list[Row]:
    uses = _data(sections, "organisation_key_uses")
    if uses is None:
        return []
    level = uses["levels"].get(str(TARGET_CLIENTS))
    if level is None:
        return []
    cores = os.cpu_count() or 1
    server_ms = level["server_cpu_ms_per_use"]
    phones_ms = level["cpu_ms_per_use"][PHONES]
    ceiling = cores * 1000 / (server_ms + phones_ms)
    return [
        Row(
            f"uses / s the {cores} cores allow at this CPU per use ({TARGET_CLIENTS} clients)",
            f"{ceiling:,.0f}",
            note=f"{cores} x 1000 ms / ({ms(server_ms)} services + {ms(phones_ms)} phones); "
            f"measured {level['uses_per_second']:,.0f}",
        ),
        Row(
            f"CPU / use, all processes, that {USES_PER_SECOND_TARGET:g} uses / s would allow",
            ms(cores * 1000 / USES_PER_SECOND_TARGET),
            note=f"phones included (they run on the same cores); the services' target is "
            f"{SERVER_CPU_MS_TARGET:g} ms",
        ),
    ]


def bounds(sections: list[Section]) -> Section:
    """Section: the floors and ceilings behind the targets, from the run's own figures."""
    section = Section(
        key="bounds",
        title="What bounds the targets (arithmetic on figures measured above in this run)",
    )
    section.rows = [*_signing(sections), *_cosigner(sections), *_uses(sections)]
    section.notes = [
        "signing steps: a signature needs one round trip to the cosigner (echo), the cosigner's "
        "durable record of the signing before its share leaves (one write + fsync), and both "
        "parties' FROST work (measured in-process; the cosigner's check of the report, about "
        "0.04 ms of it, is off the signature's path, and the part of its share computed after "
        "its commitments are known, about 0.05 ms, could overlap the fsync)",
        "cores: this machine's CPUs; the simulated phones share them with the services",
    ]
    section.data = {"rows": [{"metric": r.metric, "value": r.value} for r in section.rows]}
    return section
