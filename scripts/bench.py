"""``make bench``: how fast two-party signing is, against the brief's performance targets.

Sections, in order:

1. the FROST signing core in this process, no network: CPU per party per signature;
2. against hsm-proxy, ra, gateway and cosigner started as real processes on loopback with TLS, in a
   fresh temporary state directory (``TMPDIR`` chooses where; never ``var/``):
   a DKG enrolment's p50 with and without the PIN's key derivation; round trips per signature,
   one client's latency p50/p99, and signatures per second for 1, 16 and 64 concurrent clients,
   each beside a plain unary gRPC call (``grpc.health.v1`` ``Check`` on the cosigner's public
   listener) measured in the same run, as ratios; each process's CPU per signature under load;
3. raw SoftHSM2 ECDSA signing through python-pkcs11 (in this process, before the services
   start), and organisation-key uses per second end to end for 1, 16 and 64 clients, as a ratio
   to it, with each process's CPU, RPCs by service, HSM operations and voluntary context
   switches per use, and fsyncs per use counted by strace in a separate traced window;
4. in the same deployment, CSC ``signatures/signHash`` calls per second at 1 and 16 clients, each
   authorised (asynchronous ``credentials/authorize``, ``authorizeCheck`` polled) and approved
   on a simulated phone, beside the same phones' gRPC organisation-key uses measured alongside,
   as ratios; the approval round trip alone without polling; fsyncs per signature (strace);
5. after that deployment has stopped, the same organisation-key uses on PostgreSQL (a throwaway
   server, every service's state in its own database), with one gateway and then with the
   clients split between two, beside the SQLite figures of section 3, with each process's CPU
   and the PostgreSQL server's (``--no-postgres`` skips it).

Prints a table and writes ``bench-out/bench.json`` (``--out``). Nothing here asserts speed: the
targets are reported as met or missed, and the exit status is 0 whenever the run completed.

A new section is one function returning a :class:`scripts.bench_common.Section`: add it to
``IN_PROCESS_SECTIONS`` (runs before the services start) or to ``LOOPBACK_SECTIONS`` (an async
function given the shared :class:`scripts.bench_loopback.Loopback`: deployment, channels, keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import ROOT
from scripts import (
    bench_bounds,
    bench_common,
    bench_core,
    bench_csc,
    bench_escrow,
    bench_loopback,
    bench_postgres,
)
from scripts.bench_common import LOAD_TEST_ENV, Row, Section, Table


@dataclass(frozen=True)
class BenchConfig:
    """Everything that sizes a run."""

    core: bench_core.CoreConfig = field(default_factory=bench_core.CoreConfig)
    loopback: bench_loopback.LoopbackConfig = field(default_factory=bench_loopback.LoopbackConfig)
    escrow: bench_escrow.EscrowConfig = field(default_factory=bench_escrow.EscrowConfig)
    csc: bench_csc.CscConfig = field(default_factory=bench_csc.CscConfig)
    #: None: the PostgreSQL section does not run.
    postgres: bench_postgres.PostgresConfig | None = field(
        default_factory=bench_postgres.PostgresConfig
    )
    #: Cosigner on the upper half of the CPUs, this process (the clients) on the lower half.
    pin: bool = True


InProcessSection = Callable[[BenchConfig], Section]
LoopbackSection = Callable[[bench_loopback.Loopback], Awaitable[Section]]

#: Sections measured in this process before any service starts.
IN_PROCESS_SECTIONS: tuple[InProcessSection, ...] = (
    lambda config: bench_core.cpu_per_party(config.core),
    lambda config: bench_escrow.raw_softhsm(config.escrow),
)
#: Sections measured against the running services, in this order (they share keys and sessions).
LOOPBACK_SECTIONS: tuple[LoopbackSection, ...] = (
    bench_loopback.durable_write,
    bench_loopback.enrolment,
    bench_loopback.round_trips,
    bench_loopback.latency,
    bench_loopback.throughput,
)


def _progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _log_tails(deployment: Deployment, lines: int = 30) -> None:
    for name, service in deployment.services.items():
        try:
            tail = service.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"--- last lines of {name}.log", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def _run_services(config: BenchConfig) -> tuple[list[Section], dict[str, Any]]:
    """Start the services in a temporary state directory, run the loopback sections, stop."""
    with tempfile.TemporaryDirectory(prefix="mobilesign-bench-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        facts: dict[str, Any] = {"state_dir_filesystem": bench_common.filesystem_of(state)}
        deployment = Deployment(state, extra_env=dict(LOAD_TEST_ENV))
        _progress(f"starting hsm-proxy, ra, gateway and cosigner (state in {state})")
        try:
            started = time.perf_counter()
            deployment.start_all()
            facts["services_start_seconds"] = round(time.perf_counter() - started, 2)
            facts["cpu_affinity"] = _pin(deployment) if config.pin else "not pinned"
            sections = asyncio.run(
                bench_loopback.run(
                    deployment,
                    config.loopback,
                    [
                        *LOOPBACK_SECTIONS,
                        lambda env: bench_escrow.organisation_key_uses(env, config.escrow),
                        lambda env: bench_csc.csc_sign_hash(env, config.csc),
                    ],
                )
            )
        except BaseException:
            _log_tails(deployment)
            raise
        finally:
            deployment.stop_all()
    return sections, facts


def _pin(deployment: Deployment) -> dict[str, list[int]] | str:
    """Give the cosigner and the clients (this process) CPUs of their own, when there are two.

    Done after the services start, so that the gateway and the HSM proxy (idle while signing)
    stay unpinned. Without it, on a small machine, the scheduler sometimes puts both busy
    processes on one CPU and a run's throughput halves.
    """
    halves = bench_common.split_cpus()
    if halves is None:
        return "not pinned (one CPU)"
    clients, cosigner = halves
    bench_common.pin_process(deployment.services["cosigner"].process.pid, cosigner)
    bench_common.pin_process(os.getpid(), clients)
    return {"cosigner": sorted(cosigner), "bench_clients": sorted(clients)}


def _status(row: Row) -> str:
    if row.met is None:
        return ""
    return "ok" if row.met else "MISSED"


def _format_table(table: Table) -> list[str]:
    widths = [
        max(len(cell) for cell in column) for column in zip(table.headers, *table.rows, strict=True)
    ]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(table.headers, widths, strict=True))]
    for row in table.rows:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return lines


def _format_section(section: Section) -> list[str]:
    lines = ["", f"== {section.title}"]
    if section.rows:
        width = max(len(r.metric) for r in section.rows)
        value_width = max(len("value"), *(len(r.value) for r in section.rows))
        target_width = max(len("target"), *(len(r.target) for r in section.rows))
        lines.append(
            f"  {'metric'.ljust(width)}  {'value'.rjust(value_width)}  "
            f"{'target'.ljust(target_width)}  status"
        )
        for r in section.rows:
            line = (
                f"  {r.metric.ljust(width)}  {r.value.rjust(value_width)}  "
                f"{r.target.ljust(target_width)}  {_status(r).ljust(6)}"
            )
            if r.note:
                line += f"  {r.note}"
            lines.append(line.rstrip())
    for table in section.tables:
        lines.append("")
        lines.extend(_format_table(table))
    lines.extend(f"  note: {note}" for note in section.notes)
    return lines


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"machine: nproc {machine['nproc']}, {machine['cpu_model']}, "
        f"{machine['mem_total_gib']} GiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}; "
        f"load average at start {machine['load_average_at_start']}; "
        f"service state on {machine.get('state_dir_filesystem', 'unknown')}; "
        f"CPU affinity {machine.get('cpu_affinity', 'not pinned')}"
    )


def _targets(sections: list[Section]) -> list[dict[str, Any]]:
    return [
        {
            "section": s.key,
            "metric": r.metric,
            "value": r.value,
            "target": r.target,
            "met": r.met,
        }
        for s in sections
        for r in s.rows
        if r.met is not None
    ]


def _parse_args(argv: list[str] | None) -> tuple[BenchConfig, Path]:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-out" / "bench.json",
        help="JSON result file (default: bench-out/bench.json)",
    )
    parser.add_argument(
        "--clients",
        default="1,16,64",
        help="concurrency levels for throughput, comma-separated (default: 1,16,64)",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="seconds per level and operation (default: 3)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave CPU placement to the scheduler (default: cosigner and clients on separate "
        "halves of the CPUs)",
    )
    parser.add_argument(
        "--postgres-clients",
        help="concurrency levels on PostgreSQL, comma-separated (default: 16,64; 4,16 with "
        "--quick)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL section")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller, less precise run (checks the script)"
    )
    args = parser.parse_args(argv)
    levels = _levels(parser, "--clients", args.clients)
    postgres_levels = _levels(
        parser, "--postgres-clients", args.postgres_clients or ("4,16" if args.quick else "16,64")
    )
    core = bench_core.CoreConfig()
    loopback = bench_loopback.LoopbackConfig(levels=levels, level_seconds=args.seconds)
    if args.quick:
        core = bench_core.CoreConfig(signatures=400, warmup=20)
        loopback = bench_loopback.LoopbackConfig(
            latency_signatures=100,
            latency_warmup=10,
            round_trip_signatures=20,
            levels=levels,
            level_seconds=min(args.seconds, 1.0),
            level_warmup_seconds=0.2,
            fsync_samples=50,
            enrolment_samples=8,
            enrolment_warmup=1,
        )
    escrow = bench_escrow.EscrowConfig(
        levels=levels,
        level_seconds=loopback.level_seconds,
        raw_seconds=0.5 if args.quick else 2.0,
        traced_seconds=0.5 if args.quick else 2.0,
    )
    csc = bench_csc.CscConfig(
        level_seconds=loopback.level_seconds,
        warmup_seconds=0.1 if args.quick else 0.3,
        traced_seconds=escrow.traced_seconds,
        direct_samples=10 if args.quick else 30,
    )
    postgres = bench_postgres.PostgresConfig(
        levels=postgres_levels, level_seconds=loopback.level_seconds
    )
    config = BenchConfig(
        core=core,
        loopback=loopback,
        escrow=escrow,
        csc=csc,
        postgres=None if args.no_postgres else postgres,
        pin=not args.no_pin,
    )
    return config, args.out


def _levels(parser: argparse.ArgumentParser, flag: str, value: str) -> tuple[int, ...]:
    levels = tuple(int(x) for x in value.split(",") if x.strip())
    if not levels or min(levels) < 1:
        parser.error(f"{flag} needs positive integers")
    return levels


def _postgres(
    config: bench_postgres.PostgresConfig,
    loopback: bench_loopback.LoopbackConfig,
    sqlite_sections: list[Section],
    affinity: dict[str, list[int]] | str,
) -> Section:
    """The PostgreSQL section, beside the SQLite section's figures and CPU placement."""
    sqlite = next((s.data for s in sqlite_sections if s.key == bench_postgres.SQLITE_SECTION), None)
    return bench_postgres.organisation_key_uses_postgres(
        config,
        loopback,
        sqlite,
        # This process is still on the clients' CPUs: the cosigner goes where it was.
        cosigner_cpus=set(affinity["cosigner"]) if isinstance(affinity, dict) else None,
        progress=_progress,
        log_tails=_log_tails,
    )


def main(argv: list[str] | None = None) -> None:
    """Run every section, print the table, write the JSON file."""
    config, out = _parse_args(argv)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    machine = bench_common.machine()

    sections: list[Section] = []
    for in_process in IN_PROCESS_SECTIONS:
        _progress("in-process sections")
        sections.append(in_process(config))
    loopback_sections, facts = _run_services(config)
    sections.extend(loopback_sections)
    if config.postgres is not None:
        sections.append(
            _postgres(config.postgres, config.loopback, loopback_sections, facts["cpu_affinity"])
        )
    machine.update(facts)
    sections.append(bench_bounds.bounds(sections))
    seconds = time.perf_counter() - started

    targets = _targets(sections)
    met = sum(1 for t in targets if t["met"])
    lines = [
        f"mobilesign bench, {started_at:%Y-%m-%d %H:%M:%S} UTC, {seconds:.0f} s",
        _machine_line(machine),
    ]
    for section in sections:
        lines.extend(_format_section(section))
    lines += ["", f"targets met: {met} of {len(targets)}"]
    lines.extend(
        f"  MISSED: {t['metric']} = {t['value']} (target {t['target']})"
        for t in targets
        if not t["met"]
    )
    print("\n".join(lines), flush=True)

    document = {
        "format": "mobilesign-bench-v1",
        "started_at": started_at.isoformat(),
        "seconds": seconds,
        "machine": machine,
        "config": asdict(config),
        "targets": targets,
        "sections": {s.key: {"title": s.title, **s.data} for s in sections},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}", flush=True)


if __name__ == "__main__":
    main()
