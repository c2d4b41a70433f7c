"""Organisation-key uses on PostgreSQL, with one gateway and with two, beside SQLite.

A deployment of its own, started after the SQLite one has stopped (never two at once): a
throwaway PostgreSQL server (:class:`mobilesign.testing.postgres.PostgresServer`, unix socket
only, ``initdb``'s defaults: ``fsync`` and ``synchronous_commit`` on), every service's state in
a database and role of its own on it, and a second gateway process, ``gateway-b``, on the same
database, declared before the start. The workload, the operation and the measurement are
:func:`scripts.bench_escrow.organisation_key_uses`' (its phone set-up, its use of the key, its
level runner): first every phone at ``gateway``, then the same phones with every other one
logged in at ``gateway-b`` (the same signing session, key and grant), so that each level splits
its clients evenly between the two gateways.

Beside each process's CPU, the PostgreSQL server's: every process whose parent is its
postmaster, each backend counted for the service whose role it serves (both gateways share the
gateway's), the postmaster, its background processes and any child that exited in the window
together as ``postgres (server)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

import client
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.testing.postgres import PostgresServer, binaries
from scripts import bench_loopback
from scripts.bench_common import (
    LOAD_TEST_ENV,
    ProcessMeter,
    Row,
    Section,
    Table,
    Usage,
    _voluntary_switches,
    filesystem_of,
    ms,
    pin_process,
    process_cpu_seconds,
    ratio,
)
from scripts.bench_escrow import (
    _clients,
    _Level,
    _level,
    at_gateway,
    set_up_phones,
    use_key,
)
from scripts.bench_loopback import PHONES, Loopback, LoopbackConfig, Operation

#: The second gateway process, a replica of ``gateway`` on the same database.
GATEWAY_B = "gateway-b"
GATEWAYS = ("gateway", GATEWAY_B)
#: Every process of the deployment that serves (the phones excepted), in the tables' order.
SERVER_PROCESSES = ("hsm-proxy", "ra", *GATEWAYS, "cosigner")
#: The PostgreSQL server's share that no service's role accounts for.
POSTGRES_SERVER = "postgres (server)"
#: Where the SQLite figures come from: bench_escrow's section of the same run.
SQLITE_SECTION = "organisation_key_uses"
SECTION_KEY = "organisation_key_uses_postgres"
#: A use through one of two gateways failed so, before a gateway that lost the witness race
#: took the winner's checkpoint (server/audit.py): should it happen again, the phone tries
#: again, at most RETRIES times, and the refusals are reported, not hidden.
RETRIED_REASONS = frozenset({"WITNESS_STATE_STALE"})
RETRIES = 3
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class PostgresConfig:
    """Sizes of the PostgreSQL section."""

    levels: tuple[int, ...] = (16, 64)
    level_seconds: float = 3.0
    setup_parallelism: int = 8


def postgres_part(service: str) -> str:
    """The name under which the backends serving ``service``'s database are metered."""
    return f"postgres ({service} db)"


#: The PostgreSQL server's processes, by what they serve.
POSTGRES_PARTS = (*(postgres_part(name) for name in START_ORDER), POSTGRES_SERVER)


def _stat_fields(pid: int) -> list[str]:
    """Fields 3 onwards of ``/proc/<pid>/stat`` (the command name, in parentheses and possibly
    with spaces, split off first)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _children(parent: int) -> list[int]:
    """The live child processes of ``parent`` (their parent field in ``/proc/<pid>/stat``)."""
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if int(_stat_fields(int(entry.name))[1]) == parent:
                    children.append(int(entry.name))
    return children


def _role(pid: int) -> str | None:
    """The role a PostgreSQL backend serves, from the title it sets (``postgres: <role> <db>
    [local] <state>``); None for the server's own processes (``postgres: checkpointer``)."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    if len(words) >= 4 and words[0] == b"postgres:" and words[3] == b"[local]":
        return words[1].decode()
    return None


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    #: Each live child: the part it is metered under, its CPU seconds and voluntary switches.
    children: dict[int, tuple[str, float, int]]
    #: The postmaster's own CPU seconds and switches, and its exited children's CPU seconds.
    postmaster: Usage
    reaped_cpu_seconds: float


class PostgresMeter:
    """The :class:`Usage` of a PostgreSQL server's processes from the meter's creation to each
    :meth:`read`, by :data:`POSTGRES_PARTS`.

    A backend is counted for the service whose role it serves (``roles``: role -> service). A
    child that exits inside the window reaches the postmaster's count of its waited-for
    children's CPU (``cutime`` + ``cstime``): that, less what the child had used before the
    window, is counted as ``postgres (server)``; its context switches are lost with it (the
    services keep their connections open, so their backends live through the windows).
    """

    def __init__(self, postmaster: int, roles: Mapping[str, str]) -> None:
        self._postmaster = postmaster
        self._parts = {role: postgres_part(service) for role, service in roles.items()}
        self._start = self._snapshot()

    def _snapshot(self) -> _Snapshot:
        children = {}
        for pid in _children(self._postmaster):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                part = self._parts.get(_role(pid) or "", POSTGRES_SERVER)
                switches = sum(_voluntary_switches(pid).values())
                children[pid] = (part, process_cpu_seconds(pid), switches)
        fields = _stat_fields(self._postmaster)
        own = Usage(
            process_cpu_seconds(self._postmaster),
            sum(_voluntary_switches(self._postmaster).values()),
        )
        # Fields 16 and 17 of proc(5): CPU of the children the postmaster waited for.
        reaped = (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS
        return _Snapshot(children, own, reaped)

    def read(self) -> dict[str, Usage]:
        """Each part's usage since the meter was created."""
        now, start = self._snapshot(), self._start
        usage = dict.fromkeys(POSTGRES_PARTS, Usage(0.0, 0))
        for pid, (part, cpu, switches) in now.children.items():
            _, cpu_before, switches_before = start.children.get(pid, (part, 0.0, 0))
            usage[part] += Usage(cpu - cpu_before, switches - switches_before)
        exited_before = sum(
            c for pid, (_, c, _) in start.children.items() if pid not in now.children
        )
        reaped = now.reaped_cpu_seconds - start.reaped_cpu_seconds - exited_before
        usage[POSTGRES_SERVER] += Usage(
            now.postmaster.cpu_seconds - start.postmaster.cpu_seconds + reaped,
            now.postmaster.voluntary_switches - start.postmaster.voluntary_switches,
        )
        return usage


@dataclasses.dataclass
class _DeploymentMeter:
    """The services', the phones' and the PostgreSQL server's usage over one window."""

    processes: ProcessMeter
    postgres: PostgresMeter

    def read(self) -> dict[str, Usage]:
        """Each metered process's (or PostgreSQL part's) usage since the meters were created."""
        return {**self.processes.read(), **self.postgres.read()}


def _retrying(use: Operation, refused: Counter[str]) -> Operation:
    """``use``, tried again after a refusal for one of :data:`RETRIED_REASONS` (each counted in
    ``refused``), at most :data:`RETRIES` times."""

    async def attempt(i: int) -> None:
        for tries in range(RETRIES + 1):
            try:
                await use(i)
                return
            except client.ClientError as exc:
                if exc.reason not in RETRIED_REASONS or tries == RETRIES:
                    raise
                refused[exc.reason] += 1

    return attempt


def _postgres_cpu_ms(level: _Level) -> float:
    return sum(level.cpu_ms(part) for part in POSTGRES_PARTS)


def _all_servers_cpu_ms(level: _Level) -> float:
    """CPU per use of every service process, both gateways and the PostgreSQL server."""
    return sum(level.cpu_ms(name) for name in SERVER_PROCESSES) + _postgres_cpu_ms(level)


def _executed_at(level: _Level) -> dict[str, int]:
    """The successful ExecuteOperation calls each gateway served in the window."""
    return {
        gateway: sum(
            n
            for (method, code), n in level.rpcs[gateway].items()
            if method.endswith("ExecuteOperation") and code == "OK"
        )
        for gateway in GATEWAYS
    }


def _sqlite_level(sqlite: Mapping[str, Any] | None, clients: int) -> Mapping[str, Any] | None:
    """The SQLite section's figures at ``clients`` in this run, when measured."""
    if sqlite is None:
        return None
    level: Mapping[str, Any] | None = sqlite["levels"].get(str(clients))
    return level


def _sqlite_rate(sqlite: Mapping[str, Any] | None, clients: int) -> float | None:
    """Uses per second on SQLite at ``clients`` in this run, when measured."""
    level = _sqlite_level(sqlite, clients)
    return None if level is None else float(level["uses_per_second"])


def _sqlite_missing(sqlite: Mapping[str, Any] | None, clients: int) -> str:
    if sqlite is None:
        return f"the SQLite section ({SQLITE_SECTION}) did not run"
    return f"the SQLite section measured {', '.join(sqlite['levels'])} clients, not {clients}"


def _refusals(refused: Counter[str]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items())) or "0"


def _rows(
    runs: dict[int, dict[int, _Level]],
    refused: dict[tuple[int, int], Counter[str]],
    sqlite: Mapping[str, Any] | None,
) -> list[Row]:
    one, two = runs[1], runs[2]
    rows = []
    for clients, level in one.items():
        rate = _sqlite_rate(sqlite, clients)
        note = (
            f"SQLite {rate:,.0f}/s in this run: {ratio(level.per_second / rate)}"
            if rate
            else _sqlite_missing(sqlite, clients)
        )
        rows.append(
            Row(f"uses / s, {_clients(clients)}, 1 gateway", f"{level.per_second:,.0f}", note=note)
        )
    for clients, level in two.items():
        executed = _executed_at(level)
        rows.append(
            Row(
                f"uses / s, {_clients(clients)}, 2 gateways",
                f"{level.per_second:,.0f}",
                note=f"{ratio(level.per_second / one[clients].per_second)} of 1 gateway; "
                + ", ".join(f"{g} executed {n}" for g, n in executed.items())
                + f"; refused and retried: {_refusals(refused[2, clients])}",
            )
        )
    heaviest = max(one)
    rate = _sqlite_rate(sqlite, heaviest)
    metric = f"PostgreSQL ÷ SQLite uses / s, {_clients(heaviest)}, 1 gateway"
    if rate:
        rows.append(
            Row(
                metric,
                ratio(one[heaviest].per_second / rate),
                note=f"{one[heaviest].per_second:,.0f} ÷ {rate:,.0f} (SQLite: {SQLITE_SECTION} "
                "above, same run)",
            )
        )
    else:
        rows.append(Row(metric, "not measured", note=_sqlite_missing(sqlite, heaviest)))
    rows.append(
        Row(
            f"2 gateways ÷ 1 gateway uses / s, {_clients(heaviest)}",
            ratio(two[heaviest].per_second / one[heaviest].per_second),
            note="see notes: on this machine both gateways share the same CPUs",
        )
    )
    at_sqlite = _sqlite_level(sqlite, heaviest)
    for gateways, levels in runs.items():
        level = levels[heaviest]
        services = sum(level.cpu_ms(name) for name in SERVER_PROCESSES)
        sqlite_cpu = (
            f"; SQLite {ms(at_sqlite['server_cpu_ms_per_use'])} (4 services)" if at_sqlite else ""
        )
        rows.append(
            Row(
                f"server CPU / use, {_clients(heaviest)}, {gateways} gateway"
                + ("s" if gateways > 1 else ""),
                ms(_all_servers_cpu_ms(level)),
                note=f"services {ms(services)} + PostgreSQL {ms(_postgres_cpu_ms(level))}; "
                f"phones {ms(level.cpu_ms(PHONES))}{sqlite_cpu}",
            )
        )
    return rows


def _levels_table(
    runs: dict[int, dict[int, _Level]], refused: dict[tuple[int, int], Counter[str]]
) -> Table:
    table = Table(
        (
            "gateways",
            "clients",
            "uses/s",
            "refused (retried)",
            "p50",
            "p99",
            "server CPU/use (with PostgreSQL)",
            "PostgreSQL CPU/use",
            "servers util",
            "phones util",
        ),
        [],
    )
    for gateways, levels in runs.items():
        for clients, level in levels.items():
            latency = level.latency
            table.rows.append(
                (
                    str(gateways),
                    str(clients),
                    f"{level.per_second:,.1f}",
                    _refusals(refused[gateways, clients]),
                    ms(latency.p50_ms),
                    ms(latency.p99_ms),
                    ms(_all_servers_cpu_ms(level)),
                    ms(_postgres_cpu_ms(level)),
                    f"{level.utilisation(*SERVER_PROCESSES, *POSTGRES_PARTS):.0%}",
                    f"{level.utilisation(PHONES):.0%}",
                )
            )
    return table


def _process_table(runs: dict[int, dict[int, _Level]], sqlite: Mapping[str, Any] | None) -> Table:
    """Per process (and PostgreSQL part): CPU per use at each level and gateway count, beside
    SQLite's at the highest level; utilisation and voluntary switches per use at the highest."""
    heaviest = max(runs[1])
    at_sqlite = _sqlite_level(sqlite, heaviest)
    sqlite_cpu = None if at_sqlite is None else at_sqlite["cpu_ms_per_use"]
    columns = [(g, c) for g, levels in runs.items() for c in levels]
    table = Table(
        (
            "process",
            *((f"SQLite CPU/use @{heaviest}",) if sqlite_cpu is not None else ()),
            *(f"CPU/use @{c} {g}gw" for g, c in columns),
            *(f"util @{heaviest} {g}gw" for g in runs),
            *(f"vol. switches/use @{heaviest} {g}gw" for g in runs),
        ),
        [],
    )

    for name in [*SERVER_PROCESSES, *POSTGRES_PARTS, PHONES]:
        table.rows.append(
            (
                name,
                *(
                    (ms(sqlite_cpu[name]) if name in sqlite_cpu else "-",)
                    if sqlite_cpu is not None
                    else ()
                ),
                *(ms(runs[g][c].cpu_ms(name)) for g, c in columns),
                *(f"{runs[g][heaviest].utilisation(name):.0%}" for g in runs),
                *(f"{runs[g][heaviest].switches(name):.1f}" for g in runs),
            )
        )
    servers = [*SERVER_PROCESSES, *POSTGRES_PARTS]
    table.rows.append(
        (
            "servers + PostgreSQL",
            *(
                (ms(sum(v for n, v in sqlite_cpu.items() if n != PHONES)),)
                if sqlite_cpu is not None
                else ()
            ),
            *(ms(_all_servers_cpu_ms(runs[g][c])) for g, c in columns),
            *(f"{runs[g][heaviest].utilisation(*servers):.0%}" for g in runs),
            *(f"{sum(runs[g][heaviest].switches(n) for n in servers):.1f}" for g in runs),
        )
    )
    return table


async def _measured(
    env: Loopback,
    config: PostgresConfig,
    server: PostgresServer,
    sqlite: Mapping[str, Any] | None,
    facts: dict[str, Any],
) -> Section:
    """Each level with every phone at ``gateway``, then with every other one at ``gateway-b``."""
    deployment = env.deployment
    env.processes[GATEWAY_B] = deployment.services[GATEWAY_B].process.pid
    roles = {str(conninfo_to_dict(dsn)["user"]): name for name, dsn in deployment.databases.items()}
    if server.process is None:
        raise RuntimeError("the PostgreSQL server is not running")
    postmaster = server.process.pid

    def meter() -> _DeploymentMeter:
        return _DeploymentMeter(ProcessMeter(env.processes), PostgresMeter(postmaster, roles))

    phones = await set_up_phones(env, max(config.levels), config.setup_parallelism)
    # Odd phones log in at gateway-b: every level's first n phones split n/2 and n/2.
    at_b = await asyncio.gather(*(at_gateway(env, phone, GATEWAY_B) for phone in phones[1::2]))
    split = [phone if i % 2 == 0 else at_b[i // 2] for i, phone in enumerate(phones)]
    runs: dict[int, dict[int, _Level]] = {}
    refused: dict[tuple[int, int], Counter[str]] = {}
    for gateways, at in ((1, phones), (2, split)):
        runs[gateways] = {}
        for clients in config.levels:
            refused[gateways, clients] = Counter()
            use = _retrying(use_key(at), refused[gateways, clients])
            runs[gateways][clients] = await _level(
                env, at[:clients], use, config.level_seconds, meter
            )
    for phone in phones:
        await phone.signing.close()
    return _section(runs, refused, sqlite, config, facts)


def _section(
    runs: dict[int, dict[int, _Level]],
    refused: dict[tuple[int, int], Counter[str]],
    sqlite: Mapping[str, Any] | None,
    config: PostgresConfig,
    facts: dict[str, Any],
) -> Section:
    cpus = os.cpu_count()
    section = Section(
        SECTION_KEY,
        f"Organisation-key uses on PostgreSQL {facts['postgres_version']}, 1 and 2 gateways "
        f"({config.level_seconds:g} s per level; the same uses as on SQLite above)",
    )
    section.rows = _rows(runs, refused, sqlite)
    section.tables = [_levels_table(runs, refused), _process_table(runs, sqlite)]
    section.notes = [
        f"this machine has {cpus} CPU{'s' if cpus != 1 else ''}: a second gateway runs on the "
        "same CPUs as the first, the cosigner, the HSM proxy, the RA, PostgreSQL and the phones "
        "(this process), so it competes with them for CPU time and adds throughput only where "
        "one gateway was waiting, not computing",
        "same workload, operation and measurement as the SQLite section (bench_escrow's phone "
        "set-up, use of the key and level runner) on a deployment of its own, started after "
        "the SQLite one stopped; every service's state in its own database and role on one "
        "PostgreSQL server (unix socket, initdb's defaults: fsync and synchronous_commit on, "
        f"data on {facts['postgres_filesystem']})",
        "2 gateways: gateway-b, a second process of the gateway on the same database, running "
        "(idle) through the 1-gateway levels too; at 2 gateways every other phone uses it "
        "(logged in there; the same signing session, key and grant), so each level's clients "
        "split evenly; 'executed' = successful ExecuteOperation calls each gateway served",
        "PostgreSQL CPU = user + system time of the postmaster and every process whose parent "
        "it is (/proc), over the measured window, per use; 'postgres (<service> db)' = the "
        "backends of that service's role (both gateways share the gateway's), 'postgres "
        "(server)' = the postmaster, its background processes (WAL writer, checkpointer, "
        "autovacuum) and any child that exited in the window",
        "server CPU/use = hsm-proxy + ra + gateway + gateway-b + cosigner + PostgreSQL; "
        "the SQLite column is the SQLite section's, at the same level, in this run",
        f"refused = uses that failed with {', '.join(sorted(RETRIED_REASONS))} (a gateway's "
        "own retries at the witness signature ran out while the other gateway kept moving "
        f"the HSM proxy's witness on); the phone tries again (a new use, up to {RETRIES} "
        "times), so the window counts completed uses and the refused attempts' time is in "
        "theirs; any other failure stops the run",
    ]
    section.data = {
        **facts,
        "levels": {
            str(gateways): {
                str(clients): {
                    **level.to_json(),
                    "servers_and_postgres_cpu_ms_per_use": _all_servers_cpu_ms(level),
                    "postgres_cpu_ms_per_use": _postgres_cpu_ms(level),
                    "executed_at": _executed_at(level),
                    "refused_and_retried": dict(refused[gateways, clients]),
                }
                for clients, level in levels.items()
            }
            for gateways, levels in runs.items()
        },
        "ratio_postgres_to_sqlite": {
            str(c): level.per_second / rate
            for c, level in runs[1].items()
            if (rate := _sqlite_rate(sqlite, c))
        },
        "ratio_two_to_one_gateway": {
            str(c): level.per_second / runs[1][c].per_second for c, level in runs[2].items()
        },
        "sqlite_section": SQLITE_SECTION if sqlite is not None else None,
    }
    return section


def _server_version(server: PostgresServer) -> str:
    """The running server's own account of its version (``15.8 (Debian 15.8-0+deb12u1)``)."""
    with psycopg.connect(server.superuser_dsn("postgres")) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def organisation_key_uses_postgres(
    config: PostgresConfig,
    loopback: LoopbackConfig,
    sqlite: Mapping[str, Any] | None,
    *,
    cosigner_cpus: set[int] | None,
    progress: Callable[[str], None],
    log_tails: Callable[[Deployment], None],
) -> Section:
    """Section: organisation-key uses per second on PostgreSQL with one and two gateways, beside
    ``sqlite`` (the data of this run's SQLite section, or None when it did not run).

    Starts and stops its own PostgreSQL server and deployment; ``cosigner_cpus`` pins the
    cosigner as the SQLite run did; ``log_tails`` shows the services' logs when it fails.
    """
    try:
        binaries()
    except RuntimeError as exc:  # PostgreSQL not installed
        section = Section(SECTION_KEY, "Organisation-key uses on PostgreSQL")
        section.rows = [Row("uses / s on PostgreSQL", "not measured", note=str(exc))]
        section.data = {"not_measured": str(exc)}
        return section
    server = PostgresServer()
    progress(f"starting PostgreSQL (in {server.directory})")
    started = time.perf_counter()
    server.start()
    try:
        version = _server_version(server)
        with tempfile.TemporaryDirectory(prefix="mobilesign-bench-pg-") as tmp:
            state = Path(tmp) / "state"
            state.mkdir()
            deployment = Deployment(state, extra_env=dict(LOAD_TEST_ENV), postgres=server)
            deployment.add_replica(GATEWAY_B, "gateway")
            progress("starting hsm-proxy, ra, gateway, gateway-b and cosigner on PostgreSQL")
            try:
                deployment.start_all()
                facts = {
                    "postgres_version": version,
                    "postgres_filesystem": filesystem_of(server.directory),
                    "start_seconds": round(time.perf_counter() - started, 2),
                    "cosigner_cpus": sorted(cosigner_cpus) if cosigner_cpus else "not pinned",
                }
                if cosigner_cpus:
                    pin_process(deployment.services["cosigner"].process.pid, cosigner_cpus)
                progress(
                    f"organisation-key uses on PostgreSQL at {config.levels} clients, "
                    "1 gateway then 2"
                )
                (section,) = asyncio.run(
                    bench_loopback.run(
                        deployment,
                        loopback,
                        [lambda env: _measured(env, config, server, sqlite, facts)],
                    )
                )
            except BaseException:
                log_tails(deployment)
                raise
            finally:
                deployment.stop_all()
    finally:
        server.stop()
    return section
