"""Shared pieces of ``make bench``: result types, statistics, process CPU, machine description.

A benchmark section returns a :class:`Section`: rows for the table printed to stdout (each may
carry a target and whether it was met), optional extra tables, and ``data`` for the JSON file.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

#: Settings of a deployment that load tests drive: the measured sessions stay open from the first
#: network section to the last (on a loaded machine longer than the cosigner's idle limit for a
#: session), and every simulated phone connects from this one machine's address (the public
#: edges' per-address cap is for strangers, not for a room of phones behind one address).
LOAD_TEST_ENV = {
    "MOBILESIGN_COSIGNER_STEP_TIMEOUT_SECONDS": "600",
    "MOBILESIGN_COSIGNER_PUBLIC_MAX_RPCS_PER_PEER": "4096",
    "MOBILESIGN_GATEWAY_PUBLIC_MAX_RPCS_PER_PEER": "4096",
}


@dataclass(frozen=True)
class Row:
    """One measured value; ``met`` is None when the value has no target."""

    metric: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class Table:
    """A small matrix (for example one line per concurrency level)."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass
class Section:
    """The result of one benchmark section."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample of durations, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of_ns(cls, samples_ns: list[int]) -> Distribution:
        """Summarise durations given in nanoseconds (needs at least two samples)."""
        ms = sorted(s / 1e6 for s in samples_ns)
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(
            count=len(ms),
            mean_ms=statistics.fmean(ms),
            p50_ms=cuts[49],
            p90_ms=cuts[89],
            p99_ms=cuts[98],
            min_ms=ms[0],
            max_ms=ms[-1],
        )


def ms(value: float) -> str:
    """Milliseconds, three significant decimals for small values."""
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def ratio(value: float) -> str:
    """A ratio as ``1.23x``."""
    return f"{value:.2f}x"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads) from ``/proc/<pid>/stat``.

    Resolution is one clock tick (usually 10 ms): measure over many operations.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from ``/proc/mounts``), or ``unknown``."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(state_dir: Path | None = None) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "pynacl": _version("pynacl"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if state_dir is not None:
        info["state_dir_filesystem"] = filesystem_of(state_dir)
    return info


def pin_process(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of process ``pid`` to ``cpus`` (threads it starts later inherit)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """This process's CPUs in two halves (lower, upper), or None with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])
