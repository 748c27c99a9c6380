"""Benchmark: N virtual machines commissioned NEW -> READY at once through the whole stack (issue 11, the scale figure).

Its one job: for each N and each rack count, start the embedded stack (`metalbus up`'s code: nats-server,
PostgreSQL, two region replicas, the api, one rack's four services with rack-dhcp on port 67 of a veth — with two
racks, rack-2's four services in a namespace of their own on the same segment), make N fleet machines with
simulated Redfish BMCs in a network namespace on the other end, create them through the REST API, send every
commission call at once (64 in flight), and measure until the API reports all READY: the region powers each on
through rack-power, each DHCPs (option 93, real frames from its own MAC, firmware-like retransmits), fetches its
loader and config over TFTP, kernel and initrd over HTTP, reads its metadata and posts its inventory through the
rack. Then it checks every stored inventory against what the machine reported and that no address was leased to
two machines, and prints per-step latency percentiles, the commission calls' latency, the rows in PostgreSQL and
the CPU seconds and peak RSS of each component (and of the fleet, this process).

    .venv/bin/python bench/fleet.py --quick          # N = 100, one rack (under a minute)
    .venv/bin/python bench/fleet.py                  # N = 100, 500, 1000, each with 1 and 2 racks
    .venv/bin/python bench/fleet.py --counts 2000 --racks 2   # any sizes and rack counts

Needs root (namespace, veth, DHCP port 67 on the veth only). Everything runs in a private state directory under
/tmp with free ports, a subnet 10.<200-249>.0.0/21 (2,000 addresses) and a namespace of its own, removed however
the run ends. The last line is ``1000 machines NEW -> READY: <s> s (goal < 60 s) meets`` (or ``short``; the
slowest of the 1,000-machine runs; with --quick the largest N run).
"""

import argparse
import asyncio
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fleet_measure import STATEMENT_STATS, Usage, reset_statement_stats, sampled_usage, table_rows, top_statements
from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.machine import MachineOptions, MachineOutcome
from metalbus.fleet.profiles import fleet_profiles
from metalbus.fleet.report import percentile, render_table
from metalbus.fleet.storm import (
    StormChecks,
    StormError,
    StormRun,
    commission_storm,
    create_machines,
    storm_checks,
    storm_site,
)
from metalbus.stack.launcher import StackError
from storm_setup import private_stack_root

GOAL_S = 60.0
GOAL_COUNT = 1000
DEADLINE_S = 300.0
COMMISSION_IN_FLIGHT = 64
TIMELINE_PERIOD_S = 5.0


@dataclass
class RunFigures:
    """One storm: what the storm and its checks found (the library's own records), and what this bench adds."""

    count: int
    racks: int = 1
    run: StormRun | None = None
    checks: StormChecks | None = None
    rows: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    statements: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ready_after_s(self) -> float | None:
        return self.run.ready_after_s if self.run is not None else None

    @property
    def outcomes(self) -> list[MachineOutcome]:
        return self.checks.outcomes if self.checks is not None else []

    @property
    def clean(self) -> bool:
        if self.run is None or self.checks is None or self.run.ready_after_s is None:
            return False
        return self.run.ready == self.count and not self.checks.mismatches and self.checks.duplicate_leases == 0


async def one_run(count: int, racks: int, seed: int, root: Path, statements: bool) -> RunFigures:
    figures = RunFigures(count, racks)
    state_dir = root / f"state-{count}-{racks}"
    firmware = MachineOptions(dhcp_policy=RetransmitPolicy())  # real firmware's waits: 4 s, 8 s, 16 s ...
    postgres = STATEMENT_STATS if statements else {}
    profiles = fleet_profiles(seed, count)
    async with storm_site(state_dir, profiles, firmware, racks=racks, postgres_settings=postgres) as site:
        print(f"  stack up; machines on {site.network.interface} ({site.subnet})", flush=True)
        if statements:
            await reset_statement_stats(state_dir)
        system_ids = await create_machines(site)
        async with sampled_usage(state_dir) as usage:
            run = await commission_storm(site, system_ids, deadline_s=DEADLINE_S, in_flight=COMMISSION_IN_FLIGHT)
        figures.run, figures.checks, figures.usage = run, await storm_checks(site, system_ids), usage
        figures.rows = await table_rows(state_dir)
        if statements:
            figures.statements = await top_statements(state_dir)
    return figures


def print_run(figures: RunFigures) -> None:
    run, checks = figures.run, figures.checks
    if figures.error or run is None or checks is None:
        print(f"\n== {figures.count} machines, {figures.racks} rack(s): failed: {figures.error} ==")
        return
    took = f"{run.ready_after_s:.1f} s" if run.ready_after_s is not None else "not all READY"
    failed = run.statuses.get("failed_commissioning", 0)
    print(f"\n== {figures.count} machines, {figures.racks} rack(s): {took} (READY {run.ready}, FAILED {failed}) ==")
    print(render_table(checks.outcomes, run.ready_after_s or DEADLINE_S, checks.mismatches))
    calls = run.commission_call_s
    print(f"commission calls: p50 {percentile(calls, 0.5) * 1000:.0f} ms, p95 {percentile(calls, 0.95) * 1000:.0f} ms")
    print(
        f"leases on one address for two machines: {checks.duplicate_leases}; machines by rack: {checks.leases_by_rack}"
    )
    print("rows: " + ", ".join(f"{table} {rows}" for table, rows in figures.rows.items()))
    print(f"{'component':<18} {'CPU s':>7} {'peak RSS MiB':>13}")
    for component in figures.usage.components:
        print(f"{component.name:<18} {component.cpu_s:>7.1f} {component.peak_rss_mib:>13.0f}")
    print(f"{'fleet':<18} {figures.usage.fleet_cpu_s:>7.1f} {figures.usage.fleet_peak_rss_mib:>13.0f}")
    print_timeline(figures.usage, run)
    if figures.statements:
        print("PostgreSQL statements by total time:")
        print("\n".join(figures.statements))


def print_timeline(usage: Usage, run: StormRun) -> None:
    """Per period: commission calls answered, machines READY, and each component's share of a core."""
    shares = usage.cpu_share_by_period(TIMELINE_PERIOD_S)
    if not shares:
        return
    names = list(shares[0][1])
    print("\n" + f"{'s':>5} {'calls':>6} {'READY':>6} " + " ".join(f"{name[:9]:>9}" for name in names))
    for moment, share in shares:
        calls = sum(1 for done in run.commission_done_at if done <= moment)
        ready = sum(1 for done in run.ready_at if done <= moment)
        print(f"{moment:>5.0f} {calls:>6} {ready:>6} " + " ".join(f"{share[name]:>9.2f}" for name in names))


def summary(results: list[RunFigures]) -> list[str]:
    lines = [
        "",
        "| machines | racks | NEW -> READY s | READY | mismatches | duplicate leases | DORA p95 ms | results p95 ms |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for figures in results:
        dhcp = [o.timings["dhcp"] for o in figures.outcomes if "dhcp" in o.timings]
        results_s = [o.timings["results"] for o in figures.outcomes if "results" in o.timings]
        took = f"{figures.ready_after_s:.1f}" if figures.ready_after_s is not None else "-"
        ready = figures.run.ready if figures.run else 0
        mismatches = len(figures.checks.mismatches) if figures.checks else "-"
        duplicates = figures.checks.duplicate_leases if figures.checks else "-"
        lines.append(
            f"| {figures.count} | {figures.racks} | {took} | {ready} | {mismatches} | {duplicates} "
            f"| {percentile(dhcp, 0.95) * 1000:.0f} | {percentile(results_s, 0.95) * 1000:.0f} |"
        )
    return lines


def verdict(results: list[RunFigures], quick: bool) -> str:
    largest = max((f.count for f in results), default=0)
    wanted = [f for f in results if f.count == (largest if quick else GOAL_COUNT)]
    if not wanted:
        return f"{GOAL_COUNT} machines NEW -> READY: inf s (goal < {GOAL_S:g} s) short"
    seconds = max(f.ready_after_s if f.clean and f.ready_after_s is not None else float("inf") for f in wanted)
    meets = "meets" if seconds < GOAL_S else "short"
    return f"{wanted[0].count} machines NEW -> READY: {seconds:.1f} s (goal < {GOAL_S:g} s) {meets}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 100 only")
    parser.add_argument("--counts", default=None, help="comma-separated sizes (default 100,500,1000)")
    parser.add_argument("--racks", default=None, help="comma-separated rack counts (default 1,2; --quick: 1)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--pg-statements", action="store_true", help="print PostgreSQL's costliest statements")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    counts = [int(n) for n in args.counts.split(",")] if args.counts else ([100] if args.quick else [100, 500, 1000])
    rack_counts = [int(n) for n in args.racks.split(",")] if args.racks else ([1] if args.quick else [1, 2])
    if os.geteuid() != 0:
        print("bench/fleet.py: needs root (namespace, veth, DHCP port 67)")
        print(f"{GOAL_COUNT} machines NEW -> READY: inf s (goal < {GOAL_S:g} s) short")
        return 1
    root = private_stack_root("bench-fleet-")
    results: list[RunFigures] = []
    try:
        for count in counts:
            for racks in rack_counts:
                print(f"-- {count} machines, {racks} rack(s)", flush=True)
                try:
                    figures = asyncio.run(one_run(count, racks, args.seed + count, root, args.pg_statements))
                except (StormError, StackError, httpx.HTTPError, OSError) as error:
                    figures = RunFigures(count, racks, error=f"{type(error).__name__}: {error}")
                results.append(figures)
                print_run(figures)
    except KeyboardInterrupt:
        print("bench/fleet.py: interrupted", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(summary(results)))
    print(verdict(results, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
