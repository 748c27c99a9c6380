"""Sending power commands: pick the racks that reach the BMC, ask them in turn, record the outcome as an event.

A rack that does not answer (nobody serving, timeout) is skipped for the next candidate; a rack that answers with
an error speaks for the BMC (bad credentials, BMC unreachable from there) and ends the attempt. Every command
carries an idempotency key, the same for every rack tried, so a retried command is not acted on twice. Secrets
are read from their own table, travel only inside the command, and never appear in a log line or a reply.
"""

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError, Timeout, Unavailable
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerAction, PowerCommand, PowerEvent, PowerState
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_POWER, RACK_POWER_COMMAND
from metalbus_region import machine_store
from metalbus_region.database import Database
from metalbus_region.machine_store import PowerTarget
from metalbus_region.outbox import record_event
from metalbus_region.power_racks import RackRotation, racks_reaching

log = structlog.get_logger("metalbus.region.power")

# The rack did not answer at all: another rack on the BMC's network may.
RACK_SILENT: tuple[type[MetalbusError], ...] = (Unavailable, Timeout)


@dataclass(frozen=True)
class PowerOutcome:
    system_id: str
    action: PowerAction
    state: PowerState
    rack_id: str | None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


class PowerClient:
    """Powers machines through racks; one per replica (it remembers which racks it used last)."""

    def __init__(
        self,
        bus: Bus,
        database: Database,
        *,
        timeout_s: float,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._database = database
        self._timeout_s = timeout_s
        self._rotation = RackRotation(rng or random.Random(), monotonic)

    async def power(self, system_id: str, action: PowerAction, *, boot_from_network: bool = False) -> PowerOutcome:
        """Send ``action`` through the first rack that answers; never raises for a power failure (the outcome
        says what went wrong), only for the database being away. ``boot_from_network``: PXE on the next boot."""
        async with self._database.connection() as conn:
            target = await machine_store.power_target(conn, system_id)
            candidates = await racks_reaching(conn, target.bmc_address) if target.bmc_address else []
        if target.power_type is PowerType.MANUAL:
            return self._failed(target, action, None, "power type is manual: the operator powers this machine")
        if target.bmc_address is None:
            return self._failed(target, action, None, "machine has no BMC address")
        if not candidates:
            return self._failed(target, action, None, f"no healthy rack reaches BMC {target.bmc_address}")
        return await self._send(target, action, self._rotation.order(candidates), boot_from_network)

    async def _send(
        self, target: PowerTarget, action: PowerAction, racks: list[str], boot_from_network: bool
    ) -> PowerOutcome:
        command = PowerCommand(
            system_id=target.system_id,
            action=action,
            power_type=target.power_type,
            parameters=target.parameters,
            secrets=target.secrets,
            idempotency_key=f"power-{target.system_id}-{action.value}-{uuid.uuid4().hex}",
            boot_from_network=boot_from_network,
        )
        silent: list[str] = []
        for rack_id in racks:
            self._rotation.used(rack_id)
            try:
                result = await self._bus.request(RACK_POWER_COMMAND, command, timeout=self._timeout_s, rack_id=rack_id)
            except RACK_SILENT as error:
                log.warning("power.rack_silent", system_id=target.system_id, rack_id=rack_id, error=error.message)
                silent.append(f"{rack_id}: {error.code.value}")
                continue
            except MetalbusError as error:
                return self._failed(target, action, rack_id, f"rack {rack_id} refused: {error.message}")
            log.info("power.done", system_id=target.system_id, action=action.value, rack_id=rack_id)
            return PowerOutcome(target.system_id, action, result.state, rack_id)
        return self._failed(target, action, None, f"no rack answered ({'; '.join(silent)})")

    @staticmethod
    def _failed(target: PowerTarget, action: PowerAction, rack_id: str | None, error: str) -> PowerOutcome:
        log.warning("power.failed", system_id=target.system_id, action=action.value, rack_id=rack_id, error=error)
        return PowerOutcome(target.system_id, action, PowerState.UNKNOWN, rack_id, error)


async def record_power_event(conn: DbConnection, outcome: PowerOutcome) -> PowerEvent:
    """Add the outcome to the outbox inside the caller's transaction (wake the outbox after commit); a known
    state the BMC reported becomes the machine's ``power_state``."""
    if outcome.state is not PowerState.UNKNOWN:
        await conn.execute(
            """
            UPDATE machines SET power_state = $2, power_state_changed_at = now()
             WHERE system_id = $1 AND power_state <> $2
            """,
            outcome.system_id,
            outcome.state.value,
        )
    return await record_event(
        conn,
        EVENT_POWER,
        lambda sequence, at: PowerEvent(
            sequence=sequence,
            system_id=outcome.system_id,
            action=outcome.action,
            state=outcome.state,
            rack_id=outcome.rack_id,
            at=at,
            error=outcome.error,
        ),
        system_id=outcome.system_id,
    )
