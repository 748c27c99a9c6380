"""A whole fleet run against a region: create and commission the machines, power them on, then check what the
region recorded (every machine's status, its stored inventory against what it reported).

Two ways to power on: the fleet presses the buttons itself (power type manual, ``commission_fleet``), or the
machines have simulated Redfish BMCs and the region powers them on through a rack's rack-power, as it would real
ones (``commission_fleet_through_bmcs``). The library entry point of ``metalbus fleet`` and ``bench/fleet.py``:
the caller brings the bus and the fleet's network, and gets back the run and the region's view of it.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.machines import Machine, MachineStatus
from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.bmc import SimulatedBmcs
from metalbus.fleet.enrolment import (
    commission_machines,
    create_machines,
    machine_states,
    stored_inventories,
)
from metalbus.fleet.machine import MachineOptions, MachineOutcome, MachineResult, VirtualMachine
from metalbus.fleet.network import FleetNetwork
from metalbus.fleet.profiles import MachineProfile
from metalbus.fleet.report import inventory_mismatches
from metalbus.fleet.runner import FleetRun, run_fleet

SETTLE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CampaignResult:
    run: FleetRun
    statuses: dict[str, MachineStatus]
    """By boot MAC: the region's status of each machine once the run is over."""
    mismatches: list[str]
    """Boot MACs of READY machines whose stored inventory is not what they reported."""

    @property
    def all_ready(self) -> bool:
        ready = all(outcome.result is MachineResult.READY for outcome in self.run.outcomes)
        return ready and set(self.statuses.values()) == {MachineStatus.READY} and not self.mismatches


async def commission_fleet(
    bus: Bus,
    network: FleetNetwork,
    profiles: Sequence[MachineProfile],
    options: MachineOptions,
    *,
    concurrency: int,
    deadline_s: float,
    on_outcome: Callable[[MachineOutcome], None] | None = None,
) -> CampaignResult:
    created = await create_machines(bus, profiles)
    await commission_machines(bus, created)
    machines = [VirtualMachine(profile, network, options) for profile in profiles]
    run = await run_fleet(machines, concurrency=concurrency, deadline_s=deadline_s, on_outcome=on_outcome)
    return await region_view(bus, profiles, created, run)


async def commission_fleet_through_bmcs(
    bus: Bus, bmcs: SimulatedBmcs, profiles: Sequence[MachineProfile], *, deadline_s: float
) -> CampaignResult:
    """Create the machines with their simulated BMCs (``bmcs`` already serving), commission them all, and wait
    until each has finished its network boot (or ``deadline_s`` from the first commission call)."""
    created = await create_machines(bus, profiles, power_of=bmcs.machine_power)
    started = time.monotonic()
    await commission_machines(bus, created)
    await bmcs.wait_until_every_machine_booted(max(deadline_s - (time.monotonic() - started), 0.0))
    outcomes = [bmcs.latest_outcome(profile) for profile in profiles]
    return await region_view(bus, profiles, created, FleetRun(outcomes, time.monotonic() - started))


async def region_view(
    bus: Bus, profiles: Sequence[MachineProfile], created: Sequence[Machine], run: FleetRun
) -> CampaignResult:
    """What the region recorded for the run's machines: statuses, and stored inventories against reported ones."""
    final = await _settled(bus, [machine.system_id for machine in created])
    by_mac = {profile.boot_mac: machine for profile, machine in zip(profiles, final, strict=True)}
    statuses = {mac: machine.status for mac, machine in by_mac.items()}
    reported = {o.profile.boot_mac: o.reported for o in run.outcomes if o.reported is not None}
    ready = [mac for mac, machine in by_mac.items() if machine.status is MachineStatus.READY]
    stored = await stored_inventories(bus, [by_mac[mac].system_id for mac in ready])
    stored_by_mac: dict[str, HardwareInventory] = dict(zip(ready, stored, strict=True))
    return CampaignResult(run, statuses, inventory_mismatches(reported, stored_by_mac))


async def _settled(bus: Bus, system_ids: Sequence[str]) -> list[Machine]:
    """The machines once none is COMMISSIONING any more, or as they are after SETTLE_TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while True:
        try:
            machines = await machine_states(bus, system_ids)
        except MetalbusError:
            machines = []
        settled = machines and all(m.status is not MachineStatus.COMMISSIONING for m in machines)
        if settled or loop.time() >= deadline:
            return machines or await machine_states(bus, system_ids)
        await asyncio.sleep(0.2)
