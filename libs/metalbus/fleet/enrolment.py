"""The region's side of a fleet run, over NATS: create the machines (power type manual, or the Redfish BMCs the
fleet simulates), commission them, and read back what the region recorded (status, inventory, leases).

Creation carries an idempotency key derived from the MAC, so a repeated run finds the machines it made before
instead of failing on the MAC. Requests go out ``parallel`` at a time.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from metalbus.bus import Bus
from metalbus.contracts.leases import Lease, LeaseListQuery
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineQuery,
    PowerType,
)
from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.profiles import MachineProfile
from metalbus.subjects import LEASE_LIST, MACHINE_ACTION, MACHINE_CREATE, MACHINE_GET, MACHINE_INVENTORY

T = TypeVar("T")
U = TypeVar("U")
REQUEST_TIMEOUT_S = 15.0


async def bounded_map(work: Callable[[T], Awaitable[U]], items: Sequence[T], parallel: int) -> list[U]:
    gate = asyncio.Semaphore(max(parallel, 1))

    async def one(item: T) -> U:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


@dataclass(frozen=True)
class MachinePower:
    """How the region powers a machine: its power type, parameters and secrets."""

    power_type: PowerType = PowerType.MANUAL
    parameters: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def manual_power(_: MachineProfile) -> MachinePower:
    return MachinePower()


async def create_machines(
    bus: Bus,
    profiles: Sequence[MachineProfile],
    parallel: int = 16,
    power_of: Callable[[MachineProfile], MachinePower] = manual_power,
) -> list[Machine]:
    async def create(profile: MachineProfile) -> Machine:
        power = power_of(profile)
        request = MachineCreate(
            hostname=profile.hostname,
            architecture=profile.architecture,
            boot_mac=profile.boot_mac,
            power_type=power.power_type,
            power_parameters=power.parameters,
            power_secrets=power.secrets,
            idempotency_key=f"fleet-create-{profile.boot_mac.replace(':', '')}",
        )
        return await bus.request(MACHINE_CREATE, request, timeout=REQUEST_TIMEOUT_S)

    return await bounded_map(create, profiles, parallel)


async def commission_machines(bus: Bus, machines: Sequence[Machine], parallel: int = 16) -> list[Machine]:
    async def commission(machine: Machine) -> Machine:
        request = MachineActionRequest(system_id=machine.system_id, action=MachineAction.COMMISSION)
        return await bus.request(MACHINE_ACTION, request, timeout=REQUEST_TIMEOUT_S)

    return await bounded_map(commission, machines, parallel)


async def machine_states(bus: Bus, system_ids: Sequence[str], parallel: int = 16) -> list[Machine]:
    async def get(system_id: str) -> Machine:
        return await bus.request(MACHINE_GET, MachineQuery(system_id=system_id), timeout=REQUEST_TIMEOUT_S)

    return await bounded_map(get, system_ids, parallel)


async def stored_inventories(bus: Bus, system_ids: Sequence[str], parallel: int = 16) -> list[HardwareInventory]:
    async def read(system_id: str) -> HardwareInventory:
        return await bus.request(MACHINE_INVENTORY, MachineQuery(system_id=system_id), timeout=REQUEST_TIMEOUT_S)

    return await bounded_map(read, system_ids, parallel)


async def leases_of(bus: Bus, macs: Sequence[str]) -> list[Lease]:
    """Every active lease the region holds for these MACs."""
    wanted = set(macs)
    answer = await bus.request(LEASE_LIST, LeaseListQuery(), timeout=REQUEST_TIMEOUT_S)
    return [lease for lease in answer.leases if lease.mac in wanted]
