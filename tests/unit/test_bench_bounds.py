"""make bench's bounds section: the arithmetic on the other sections' figures, and nothing when
a section it reads did not run."""

from __future__ import annotations

import os
from typing import Any

from scripts import bench_bounds
from scripts.bench_common import Section


def _section(key: str, data: dict[str, Any]) -> Section:
    section = Section(key, key)
    section.data = data
    return section


def _latency(p50_ms: float) -> dict[str, float]:
    return {"p50_ms": p50_ms}


SECTIONS = [
    _section(
        "core_cpu", {"phone_cpu_ms_per_signature": 0.3, "cosigner_cpu_ms_per_signature": 0.25}
    ),
    _section("durable_write", {"latency": _latency(0.25)}),
    _section(
        "latency",
        {"sign": {"latency": _latency(1.7)}, "echo": {"latency": _latency(0.5)}},
    ),
    _section(
        "throughput",
        {
            "levels": [
                {
                    "clients": 64,
                    "sign": {"cpu_ms_per_op": {"cosigner": 0.6}},
                    "echo": {"cpu_ms_per_op": {"cosigner": 0.28}},
                }
            ]
        },
    ),
    _section(
        "organisation_key_uses",
        {
            "levels": {
                "64": {
                    "server_cpu_ms_per_use": 6.0,
                    "cpu_ms_per_use": {"phones": 2.0},
                    "uses_per_second": 200.0,
                }
            }
        },
    ),
]


def test_the_bounds_are_the_sums_of_the_measured_parts() -> None:
    values = {row.metric: row.value for row in bench_bounds.bounds(SECTIONS).rows}
    steps = next(v for m, v in values.items() if m.startswith("signing p50, its steps"))
    assert steps == "1.300 ms"  # 0.5 + 0.25 + 0.3 + 0.25
    assert values["those steps / echo p50"] == "2.60x"
    beside = next(v for m, v in values.items() if m.startswith("cosigner CPU / signature beside"))
    assert beside == "0.350 ms"  # 0.6 - 0.25
    cores = os.cpu_count() or 1
    allowed = next(v for m, v in values.items() if m.startswith("uses / s the"))
    assert allowed == f"{cores * 1000 / 8.0:,.0f}"


def test_a_section_that_did_not_run_gives_no_row() -> None:
    without_latency = [s for s in SECTIONS if s.key != "latency"]
    metrics = [row.metric for row in bench_bounds.bounds(without_latency).rows]
    assert not any(m.startswith("signing p50") for m in metrics)
    assert any(m.startswith("cosigner CPU") for m in metrics)
    assert bench_bounds.bounds([]).rows == []
