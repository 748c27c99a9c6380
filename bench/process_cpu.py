"""Where the CPU goes during one benchmark run: utime+stime of named processes from /proc, around a workload.

Its one job: snapshot the CPU ticks of each process of a set of named groups (a group is a pid and, optionally,
its children: PostgreSQL's backends are children of the postmaster), run the workload, snapshot again, and give
each group's CPU seconds; the workload's own child processes (perfdhcp) come from ``RUSAGE_CHILDREN`` and the
whole machine's busy time from /proc/stat, so what no group accounts for (other work on the host, the kernel's
softirq time for the link) shows as the rest.
"""

import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
ResultT = TypeVar("ResultT")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return stat[stat.rindex(")") + 2 :].split()


def process_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` (all its threads, not its children), or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, all) ticks of every CPU since boot, from /proc/stat's first line (idle and iowait are not busy)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass(frozen=True)
class Group:
    """A named set of processes: ``pid`` itself, its children too when ``children`` says so; ``which`` picks
    among them by command line (None: all)."""

    name: str
    pid: int
    children: bool = False
    which: Callable[[str], bool] | None = None

    def pids(self) -> list[int]:
        members = [self.pid, *children_of(self.pid)] if self.children else [self.pid]
        return [pid for pid in members if self.which is None or self.which(command_line(pid))]


@dataclass(frozen=True)
class CpuUse:
    wall_s: float
    seconds: dict[str, float]
    """CPU seconds per group, then ``workload`` (the run's child processes), ``rest`` and ``machine``."""


def _snapshot(groups: Iterable[Group]) -> dict[str, dict[int, int]]:
    snapshot: dict[str, dict[int, int]] = {}
    for group in groups:
        ticks = {pid: process_ticks(pid) for pid in group.pids()}
        snapshot[group.name] = {pid: value for pid, value in ticks.items() if value is not None}
    return snapshot


def measure_cpu(groups: list[Group], workload: Callable[[], ResultT], wall_s: float) -> tuple[ResultT, CpuUse]:
    """Run ``workload`` (``wall_s`` long, for the machine's share) and account its CPU by group. A process that
    starts during the run counts from zero; one that ends during it is lost (its group reads low)."""
    before, busy_before = _snapshot(groups), machine_busy_ticks()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = workload()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, busy_after = _snapshot(groups), machine_busy_ticks()
    seconds = {
        group.name: sum(ticks - before[group.name].get(pid, 0) for pid, ticks in after[group.name].items())
        / TICKS_PER_S
        for group in groups
    }
    seconds["workload"] = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    seconds["machine"] = (busy_after[0] - busy_before[0]) / TICKS_PER_S
    seconds["rest"] = seconds["machine"] - sum(value for name, value in seconds.items() if name != "machine")
    return result, CpuUse(wall_s, seconds)
