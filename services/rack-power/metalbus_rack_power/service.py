"""The rack-power service: presence, the power commands of this rack, and power-state polling, until stopped."""

import asyncio
import contextlib

import structlog

from metalbus.bus import Bus
from metalbus.contracts.machines import PowerType
from metalbus.contracts.racks import RackServiceKind
from metalbus.metrics_endpoint import serving_metrics
from metalbus.rack_presence import keep_present
from metalbus.subjects import RACK_POWER_COMMAND
from metalbus_rack_power.commands import PowerCommands
from metalbus_rack_power.drivers import DriverRegistry
from metalbus_rack_power.idempotency import OutcomeCache
from metalbus_rack_power.ipmi import IpmiDriver
from metalbus_rack_power.manual import ManualDriver
from metalbus_rack_power.metrics import CountedPowerPoller, RackPowerMetrics
from metalbus_rack_power.redfish import RedfishDriver
from metalbus_rack_power.retry import RetryPolicy
from metalbus_rack_power.settings import RackPowerSettings

log = structlog.get_logger("metalbus.rack.power")


class Drivers:
    """The drivers of one process and the resources they own (IPMI threads, Redfish connections)."""

    def __init__(self, settings: RackPowerSettings) -> None:
        retry = RetryPolicy(retries=settings.retries, backoff_s=settings.retry_backoff_s)
        self.ipmi = IpmiDriver(max_workers=settings.max_bmc_workers, timeout_s=settings.ipmi_timeout_s, retry=retry)
        self.redfish = RedfishDriver(timeout_s=settings.redfish_timeout_s, retry=retry)
        self.registry = DriverRegistry(
            {PowerType.IPMI: self.ipmi, PowerType.REDFISH: self.redfish, PowerType.MANUAL: ManualDriver()}
        )

    async def close(self) -> None:
        self.ipmi.close()
        await self.redfish.close()


async def run_rack_power(
    settings: RackPowerSettings, stop: asyncio.Event, *, commands_ready: "asyncio.Future[PowerCommands] | None" = None
) -> None:
    """Serve ``rack.<rack_id>.power.command`` and poll until ``stop``; ``commands_ready`` (tests) gets the
    command handler once requests are served."""
    bus = await Bus.connect(settings.connect_options(f"{RackServiceKind.POWER.value}:{settings.rack_id}"))
    drivers = Drivers(settings)
    metrics = RackPowerMetrics()
    timed_drivers = metrics.timed_drivers(drivers.registry)
    outcomes = OutcomeCache(capacity=settings.idempotency_capacity, ttl_s=settings.idempotency_ttl_s)
    commands = PowerCommands(timed_drivers, outcomes, settings.rack_id)
    poller = CountedPowerPoller(
        metrics,
        bus,
        timed_drivers,
        settings.rack_id,
        concurrency=settings.poll_concurrency,
        request_timeout_s=settings.request_timeout_s,
    )
    presence = asyncio.create_task(keep_present(bus, RackServiceKind.POWER, settings, stop))
    polling = asyncio.create_task(poller.run(stop, settings.poll_interval_s))
    try:
        async with serving_metrics(metrics.registry, settings.metrics_address, settings.metrics_port):
            subject = RACK_POWER_COMMAND.format(rack_id=settings.rack_id)
            await bus.serve(RACK_POWER_COMMAND, metrics.instrumented(commands.handle), subscribe_to=subject)
            log.info("power.serving", rack_id=settings.rack_id, subject=subject)
            if commands_ready is not None:
                commands_ready.set_result(commands)
            await stop.wait()
    except OSError as error:
        raise SystemExit(
            f"metalbus-rack-power: cannot serve metrics on port {settings.metrics_port}: {error}"
        ) from None
    finally:
        stop.set()
        for task in (presence, polling):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.drain()
        await drivers.close()
