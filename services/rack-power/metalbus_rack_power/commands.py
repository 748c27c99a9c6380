"""Carrying out one power command: idempotency, PXE-before-power-on, dispatch to the power type's driver.

A repeated idempotency key answers the state the first command reached without acting again, also while the
first is still running (the repeat waits for it). Log lines name the machine, action and BMC address, never the
parameters' secrets.
"""

import asyncio

import structlog

from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.power import PowerAction, PowerCommand, PowerResult, PowerState
from metalbus_rack_power.drivers import Bmc, DriverRegistry, PowerDriver
from metalbus_rack_power.idempotency import OutcomeCache

log = structlog.get_logger("metalbus.rack.power")


class PowerCommands:
    def __init__(self, drivers: DriverRegistry, outcomes: OutcomeCache, rack_id: str) -> None:
        self._drivers = drivers
        self._outcomes = outcomes
        self._rack_id = rack_id
        self._running: dict[str, asyncio.Task[PowerState]] = {}
        self.acted = 0  # commands that reached a driver (a repeated key does not)

    async def handle(self, command: PowerCommand) -> PowerResult:
        key = command.idempotency_key
        if key is None:
            return PowerResult(system_id=command.system_id, state=await self._act(command))
        remembered = self._outcomes.get(key)
        if remembered is not None:
            log.info("power.repeated", system_id=command.system_id, action=command.action.value)
            return PowerResult(system_id=command.system_id, state=remembered)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._act(command))
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return PowerResult(system_id=command.system_id, state=await asyncio.shield(task))

    def _finished(self, key: str, task: "asyncio.Task[PowerState]") -> None:
        self._running.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._outcomes.put(key, task.result())

    async def _act(self, command: PowerCommand) -> PowerState:
        bmc = Bmc(command.power_type, command.parameters, command.secrets)
        address = command.parameters.get("address")
        self.acted += 1
        try:
            state = await perform(self._drivers.driver(command.power_type), bmc, command)
        except MetalbusError as error:
            log.warning(
                "power.failed",
                system_id=command.system_id,
                action=command.action.value,
                bmc=address,
                error=error.message,
            )
            raise
        log.info("power.done", system_id=command.system_id, action=command.action.value, bmc=address, state=state.value)
        return state


async def perform(driver: PowerDriver, bmc: Bmc, command: PowerCommand) -> PowerState:
    """Do ``command.action``; on/cycle first set PXE for the next boot when the command asks for it."""
    if command.action is PowerAction.QUERY:
        return await driver.query(bmc)
    if command.action is PowerAction.OFF:
        await driver.off(bmc)
        return PowerState.OFF
    if command.boot_from_network:
        await driver.set_boot_pxe(bmc)
    if command.action is PowerAction.ON:
        await driver.on(bmc)
    else:
        await driver.cycle(bmc)
    return PowerState.ON
