"""rack-power's Prometheus metrics: commands by action and outcome, BMC call latency, polling rounds.

Nothing in the drivers or the command logic knows about metrics: ``RackPowerMetrics.instrumented`` wraps the
command handler (and binds the command's ``system_id`` into structlog's context, so every line logged while
carrying it out names the machine), ``timed_drivers`` wraps every driver so each BMC call is timed, and
``CountedPowerPoller`` counts the rounds of the poller it extends.
"""

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerCommand, PowerResult, PowerState
from metalbus.metrics_endpoint import metric_prefix
from metalbus_rack_power.drivers import Bmc, DriverRegistry, PowerDriver
from metalbus_rack_power.polling import PowerPoller

PREFIX = metric_prefix("rack_power")
OK = "ok"
UNEXPECTED = "internal"
BMC_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

T = TypeVar("T")
CommandHandler = Callable[[PowerCommand], Awaitable[PowerResult]]


class RackPowerMetrics:
    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.commands = Counter(
            PREFIX + "commands",
            "Power commands answered, by action and outcome (ok, or the error code answered).",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.bmc_latency = Histogram(
            PREFIX + "bmc_request_duration_seconds",
            "Time one BMC operation took (retries included, failures too), by power type and operation.",
            ["power_type", "operation"],
            buckets=BMC_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.poll_rounds = Counter(
            PREFIX + "poll_rounds",
            "Polling rounds, by outcome (ok, or the error code that skipped the round).",
            ["outcome"],
            registry=self.registry,
        )

    def instrumented(self, handle: CommandHandler) -> CommandHandler:
        """``handle`` counted by action and outcome, with the command's machine bound into the log context."""

        async def handle_counted(command: PowerCommand) -> PowerResult:
            structlog.contextvars.bind_contextvars(system_id=command.system_id)
            outcome = UNEXPECTED
            try:
                result = await handle(command)
                outcome = OK
                return result
            except MetalbusError as error:
                outcome = error.code.value
                raise
            finally:
                self.commands.labels(action=command.action.value, outcome=outcome).inc()

        return handle_counted

    def timed_drivers(self, drivers: DriverRegistry) -> DriverRegistry:
        """The same drivers, each BMC operation timed into ``bmc_latency``."""
        return DriverRegistry(
            {
                power_type: TimedDriver(drivers.driver(power_type), power_type, self)
                for power_type in drivers.power_types
            }
        )


class TimedDriver:
    """A ``PowerDriver`` that times every operation of the driver it wraps."""

    def __init__(self, driver: PowerDriver, power_type: PowerType, metrics: RackPowerMetrics) -> None:
        self.driver = driver
        self.power_type = power_type
        self.metrics = metrics

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = self.metrics.clock()
        try:
            return await call
        finally:
            elapsed = self.metrics.clock() - started
            self.metrics.bmc_latency.labels(power_type=self.power_type.value, operation=operation).observe(elapsed)

    async def on(self, bmc: Bmc) -> None:
        await self._timed("on", self.driver.on(bmc))

    async def off(self, bmc: Bmc) -> None:
        await self._timed("off", self.driver.off(bmc))

    async def cycle(self, bmc: Bmc) -> None:
        await self._timed("cycle", self.driver.cycle(bmc))

    async def query(self, bmc: Bmc) -> PowerState:
        return await self._timed("query", self.driver.query(bmc))

    async def set_boot_pxe(self, bmc: Bmc) -> None:
        await self._timed("set_boot_pxe", self.driver.set_boot_pxe(bmc))


class CountedPowerPoller(PowerPoller):
    """The poller, its rounds counted into ``metrics.poll_rounds``."""

    def __init__(
        self,
        metrics: RackPowerMetrics,
        bus: Bus,
        drivers: DriverRegistry,
        rack_id: str,
        *,
        concurrency: int,
        request_timeout_s: float,
    ) -> None:
        super().__init__(bus, drivers, rack_id, concurrency=concurrency, request_timeout_s=request_timeout_s)
        self.metrics = metrics

    async def poll_once(self) -> int:
        outcome = UNEXPECTED
        try:
            changes = await super().poll_once()
            outcome = OK
            return changes
        except MetalbusError as error:
            outcome = error.code.value
            raise
        finally:
            self.metrics.poll_rounds.labels(outcome=outcome).inc()
