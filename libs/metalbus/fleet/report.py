"""The fleet run as numbers and a table (pure): counts by result, per-step latency p50/p95, inventory mismatches."""

from collections.abc import Sequence
from dataclasses import dataclass

from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.machine import STEPS, MachineOutcome, MachineResult


@dataclass(frozen=True)
class StepLatency:
    step: str
    count: int
    p50_s: float
    p95_s: float
    max_s: float


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(int(-(-fraction * len(ordered) // 1)), 1)  # ceil(fraction * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


def step_latencies(outcomes: Sequence[MachineOutcome]) -> list[StepLatency]:
    latencies = []
    for step in STEPS:
        values = [outcome.timings[step] for outcome in outcomes if step in outcome.timings]
        top = max(values, default=0.0)
        latencies.append(StepLatency(step, len(values), percentile(values, 0.5), percentile(values, 0.95), top))
    return latencies


def inventory_mismatches(reported: dict[str, HardwareInventory], stored: dict[str, HardwareInventory]) -> list[str]:
    """MACs whose stored inventory differs from what the machine reported (or is missing)."""
    return sorted(mac for mac, inventory in reported.items() if stored.get(mac) != inventory)


def render_table(outcomes: Sequence[MachineOutcome], elapsed_s: float, mismatches: Sequence[str]) -> str:
    counts = {result: sum(1 for o in outcomes if o.result is result) for result in MachineResult}
    lines = [
        f"machines {len(outcomes)} in {elapsed_s:.1f} s: "
        + ", ".join(f"{result.value.upper()} {count}" for result, count in counts.items()),
        f"inventory mismatches: {len(mismatches)}" + (f" ({', '.join(mismatches[:10])})" if mismatches else ""),
        "",
        f"{'step':<10} {'count':>6} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}",
    ]
    for latency in step_latencies(outcomes):
        lines.append(
            f"{latency.step:<10} {latency.count:>6} {latency.p50_s * 1000:>9.1f} "
            f"{latency.p95_s * 1000:>9.1f} {latency.max_s * 1000:>9.1f}"
        )
    problems = [o for o in outcomes if o.result is not MachineResult.READY]
    for outcome in problems[:20]:
        lines.append(f"{outcome.profile.boot_mac} {outcome.result.value} at {outcome.step}: {outcome.error or ''}")
    return "\n".join(lines)
