"""Shared pieces of ``make bench``: result types, statistics, process CPU, context switches and
system calls, machine description.

A benchmark section returns a :class:`Section`: rows for the table printed to stdout (each may
carry a target and whether it was met), optional extra tables, and ``data`` for the JSON file.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
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


def _voluntary_switches(pid: int) -> dict[int, int]:
    """Voluntary context switches of each live thread of ``pid``, by thread id.

    ``/proc/<pid>/status`` counts the main thread only, hence one ``task/<tid>/status`` each.
    """
    counts: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counts[int(tid)] = int(line.split()[1])
    return counts


@dataclass(frozen=True)
class Usage:
    """What one process spent over a window: CPU seconds (user + system, all threads) and
    voluntary context switches (all threads: each time one blocked on a lock, a queue or I/O)."""

    cpu_seconds: float
    voluntary_switches: int

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_seconds + other.cpu_seconds,
            self.voluntary_switches + other.voluntary_switches,
        )


class ProcessMeter:
    """The :class:`Usage` of named processes from the meter's creation to each :meth:`read`.

    A thread that ends inside the window takes its context switches with it (its CPU time stays
    in the process's); the services' threads live as long as the services.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._cpu = {name: process_cpu_seconds(pid) for name, pid in self._pids.items()}
        self._switches = {name: _voluntary_switches(pid) for name, pid in self._pids.items()}

    def read(self) -> dict[str, Usage]:
        """Each process's usage since the meter was created."""
        usage = {}
        for name, pid in self._pids.items():
            before = self._switches[name]
            switches = sum(n - before.get(tid, 0) for tid, n in _voluntary_switches(pid).items())
            usage[name] = Usage(process_cpu_seconds(pid) - self._cpu[name], switches)
        return usage


#: The system calls that make written data durable (SQLite's unix VFS uses one or the other).
SYNC_SYSCALLS = ("fsync", "fdatasync")


class SyscallCounter:
    """Counts some system calls of running processes (all their threads) with ``strace -f -c``.

    Traced, every thread stops at each of its system calls, so the processes run slower: a traced
    window gives counts, never speed. :meth:`attach` says why when a process cannot be traced
    (strace missing, ptrace not permitted); nothing is traced then.
    """

    def __init__(self, pids: Mapping[str, int], syscalls: tuple[str, ...]) -> None:
        self._pids = dict(pids)
        self._syscalls = syscalls
        self._tracers: dict[str, subprocess.Popen[bytes]] = {}
        self._directory = tempfile.TemporaryDirectory(prefix="mobilesign-bench-strace-")

    def _path(self, name: str, kind: str) -> Path:
        return Path(self._directory.name) / f"{name}.{kind}"

    def _traced(self, name: str) -> bool:
        """Whether every thread of process ``name`` has its strace as tracer."""
        tracer = str(self._tracers[name].pid)
        for tid in os.listdir(f"/proc/{self._pids[name]}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                status = Path(f"/proc/{self._pids[name]}/task/{tid}/status").read_text()
                if f"TracerPid:\t{tracer}\n" not in status:
                    return False
        return True

    def attach(self, timeout: float = 10.0) -> str | None:
        """Start tracing every process: None once all are traced, else the reason it failed."""
        strace = shutil.which("strace")
        if strace is None:
            self._directory.cleanup()
            return "strace is not installed"
        for name, pid in self._pids.items():
            with self._path(name, "err").open("wb") as errors:
                self._tracers[name] = subprocess.Popen(
                    [
                        strace,
                        "-f",  # every thread, and any started while traced
                        "-c",  # a summary only: calls per system call
                        f"--trace={','.join(self._syscalls)}",
                        f"--output={self._path(name, 'out')}",
                        f"--attach={pid}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
        deadline = time.monotonic() + timeout
        waiting = set(self._pids)
        while waiting:
            for name in sorted(waiting):
                if self._tracers[name].poll() is not None:
                    lines = self._path(name, "err").read_text(errors="replace").splitlines()
                    self.detach()
                    return f"strace exited on {name}: {lines[-1] if lines else 'no message'}"
                if self._traced(name):
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                self.detach()
                return f"strace did not attach to {', '.join(sorted(waiting))} in {timeout:g} s"
            time.sleep(0.02)
        return None

    def detach(self) -> dict[str, dict[str, int]]:
        """Stop tracing; each process's calls of each counted system call."""
        counts: dict[str, dict[str, int]] = {}
        for name, tracer in self._tracers.items():
            if tracer.poll() is None:
                tracer.send_signal(signal.SIGINT)  # strace detaches and writes its summary
            tracer.wait(30)
            counts[name] = dict.fromkeys(self._syscalls, 0)
            with contextlib.suppress(FileNotFoundError):
                # Summary lines: % time, seconds, usecs/call, calls, [errors,] syscall.
                for line in self._path(name, "out").read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 5 and parts[-1] in counts[name]:
                        counts[name][parts[-1]] = int(parts[3])
        self._tracers.clear()
        self._directory.cleanup()
        return counts


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
