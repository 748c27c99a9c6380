"""Polling: read the power state of every machine whose BMC this rack reaches and report changes only.

Each round asks the region for the targets (``region.power.targets``), queries their BMCs a few at a time, and
sends ``region.power.observed`` for each machine whose state differs from what this rack last reported. A BMC
that fails to answer is skipped this round (logged without secrets); a report the region did not take is sent
again next round.
"""

import asyncio
import contextlib

import structlog

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.power import PowerObservation, PowerState, PowerTargetSpec, PowerTargetsQuery
from metalbus.subjects import POWER_OBSERVED, POWER_TARGETS
from metalbus_rack_power.drivers import Bmc, DriverRegistry

log = structlog.get_logger("metalbus.rack.power.polling")


class PowerPoller:
    def __init__(
        self, bus: Bus, drivers: DriverRegistry, rack_id: str, *, concurrency: int, request_timeout_s: float
    ) -> None:
        self._bus = bus
        self._drivers = drivers
        self._rack_id = rack_id
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout_s = request_timeout_s
        self.reported: dict[str, PowerState] = {}

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
            except MetalbusError as error:
                log.warning("power.poll_skipped", rack_id=self._rack_id, error=error.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def poll_once(self) -> int:
        """One round; returns how many changes the region took."""
        query = PowerTargetsQuery(rack_id=self._rack_id)
        targets = (await self._bus.request(POWER_TARGETS, query, timeout=self._timeout_s)).targets
        known = {target.system_id for target in targets}
        for system_id in set(self.reported) - known:
            del self.reported[system_id]
        changes = await asyncio.gather(*(self._poll(target) for target in targets))
        return sum(changes)

    async def _poll(self, target: PowerTargetSpec) -> bool:
        async with self._slots:
            try:
                driver = self._drivers.driver(target.power_type)
                state = await driver.query(Bmc(target.power_type, target.parameters, target.secrets))
            except MetalbusError as error:
                log.info("power.poll_failed", system_id=target.system_id, error=error.message)
                return False
        if self.reported.get(target.system_id) == state:
            return False
        observation = PowerObservation(system_id=target.system_id, rack_id=self._rack_id, state=state)
        try:
            await self._bus.request(POWER_OBSERVED, observation, timeout=self._timeout_s)
        except MetalbusError as error:
            log.warning("power.report_failed", system_id=target.system_id, error=error.message)
            return False
        self.reported[target.system_id] = state
        return True
