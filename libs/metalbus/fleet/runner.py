"""Run a fleet: N virtual machines powered on together, at most ``concurrency`` booting at once, within a deadline.

A machine still booting when the deadline comes is stopped and reported ``stuck`` with the step it was in; the
others report ``ready`` or ``failed``. Each outcome carries its per-step seconds and what the machine reported.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metalbus.fleet.machine import MachineOutcome, MachineResult, VirtualMachine


@dataclass
class FleetRun:
    outcomes: list[MachineOutcome]
    elapsed_s: float
    counts: dict[MachineResult, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {result: 0 for result in MachineResult}
        for outcome in self.outcomes:
            self.counts[outcome.result] += 1


async def run_fleet(
    machines: Sequence[VirtualMachine],
    *,
    concurrency: int,
    deadline_s: float,
    on_outcome: Callable[[MachineOutcome], None] | None = None,
) -> FleetRun:
    """Power every machine on (``concurrency`` at a time) and wait for all, or for ``deadline_s``."""
    gate = asyncio.Semaphore(max(concurrency, 1))
    started = time.monotonic()

    async def boot(machine: VirtualMachine) -> None:
        async with gate:
            outcome = await machine.power_on()
        if on_outcome is not None:
            on_outcome(outcome)

    tasks = [asyncio.create_task(boot(machine)) for machine in machines]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return FleetRun([machine.outcome for machine in machines], time.monotonic() - started)
