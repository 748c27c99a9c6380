"""What bench/fleet.py measures besides the machines: CPU seconds and peak RSS of each stack component (a process
and its descendants, read from /proc while the run goes; RSS is summed over the processes, so PostgreSQL's shared
buffers count once per backend), of the bench process itself (the fleet), and the rows the run left in
PostgreSQL."""

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from metalbus.stack.launcher import pid_file_for, recorded_stack
from metalbus.stack.processes import running_identity

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_EVERY_S = 0.5
COUNTED_TABLES = (
    "machines", "leases", "events", "commissioning_results", "hardware_inventory", "syslog_lines", "metadata_tokens",
)  # fmt: skip


@dataclass
class ComponentUsage:
    name: str
    pid: int
    cpu_s_at_start: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class Usage:
    components: list[ComponentUsage] = field(default_factory=list)
    fleet_cpu_s: float = 0.0
    fleet_peak_rss_mib: float = 0.0
    timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(seconds since the start, CPU seconds so far by component and "fleet"), one entry per sample."""

    def cpu_share_by_period(self, period_s: float) -> list[tuple[float, dict[str, float]]]:
        """Per period: the share of one core each component used in it (1.0 = a whole core)."""
        shares, last_time, last = [], 0.0, {name: 0.0 for name in self.timeline[0][1]} if self.timeline else {}
        for moment, totals in self.timeline:
            if moment - last_time >= period_s:
                spent = moment - last_time
                shares.append((moment, {n: (totals[n] - last.get(n, 0.0)) / spent for n in totals}))
                last_time, last = moment, totals
        return shares


def _process_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, RSS KiB) of every process."""
    table: dict[int, tuple[int, float, int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent, ticks, rss_pages = int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21])
        table[int(entry.name)] = (parent, ticks / CLOCK_TICKS, rss_pages * PAGE_KIB)
    return table


def _tree_totals(table: dict[int, tuple[int, float, int]], root: int) -> tuple[float, int]:
    """CPU seconds and RSS KiB of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    cpu, rss, stack = 0.0, 0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            cpu += table[pid][1]
            rss += table[pid][2]
        stack.extend(children.get(pid, ()))
    return cpu, rss


def stack_components(state_dir: Path) -> list[ComponentUsage]:
    _, layout, cluster, components = recorded_stack(state_dir)
    found = []
    for component in components:
        identity = running_identity(pid_file_for(component, layout, cluster))
        if identity is not None:
            found.append(ComponentUsage(component.name, identity.pid))
    return found


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.asynccontextmanager
async def sampled_usage(state_dir: Path) -> AsyncIterator[Usage]:
    """CPU used by each component (and this process) between entering and leaving; peak RSS seen meanwhile."""
    usage = Usage(stack_components(state_dir))
    table = _process_table()
    for component in usage.components:
        component.cpu_s_at_start = _tree_totals(table, component.pid)[0]
    own_at_start = _own_cpu_s()
    started = time.monotonic()

    def sample() -> None:
        table = _process_table()
        for component in usage.components:
            cpu, rss = _tree_totals(table, component.pid)
            if cpu:
                component.cpu_s = cpu - component.cpu_s_at_start
            component.peak_rss_mib = max(component.peak_rss_mib, rss / 1024)
        usage.fleet_cpu_s = _own_cpu_s() - own_at_start
        own_rss = table.get(os.getpid(), (0, 0.0, 0))[2]  # this process alone: the stack's processes are its children
        usage.fleet_peak_rss_mib = max(usage.fleet_peak_rss_mib, own_rss / 1024)
        totals = {component.name: component.cpu_s for component in usage.components} | {"fleet": usage.fleet_cpu_s}
        usage.timeline.append((time.monotonic() - started, totals))

    async def keep_sampling() -> None:
        while True:
            await asyncio.to_thread(sample)
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(keep_sampling())
    try:
        yield usage
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        sample()


async def table_rows(state_dir: Path) -> dict[str, int]:
    _, _, cluster, _ = recorded_stack(state_dir)
    connection = await asyncpg.connect(cluster.dsn(), timeout=10)
    try:
        return {table: int(await connection.fetchval(f"SELECT count(*) FROM {table}")) for table in COUNTED_TABLES}
    finally:
        await connection.close()


STATEMENT_STATS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
"""PostgreSQL settings that make ``top_statements`` possible (bench/fleet.py --pg-statements)."""


async def reset_statement_stats(state_dir: Path) -> None:
    _, _, cluster, _ = recorded_stack(state_dir)
    connection = await asyncpg.connect(cluster.dsn(), timeout=10)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await connection.execute("SELECT pg_stat_statements_reset()")
    finally:
        await connection.close()


async def top_statements(state_dir: Path, limit: int = 12) -> list[str]:
    """The statements that took the most server time since the reset: total ms, calls, mean ms, the text."""
    _, _, cluster, _ = recorded_stack(state_dir)
    connection = await asyncpg.connect(cluster.dsn(), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT total_exec_time, calls, mean_exec_time, query FROM pg_stat_statements"
            " ORDER BY total_exec_time DESC LIMIT $1",
            limit,
        )
    finally:
        await connection.close()
    return [
        f"{row['total_exec_time']:>9.0f} ms {row['calls']:>7} calls {row['mean_exec_time']:>8.2f} ms  "
        + " ".join(str(row["query"]).split())[:160]
        for row in rows
    ]
