"""Commissioning: the commission and abort actions with their power work, and the reaper that enforces deadlines.

Each action has two halves. The database half runs inside the caller's transaction (the idempotency key's): it
moves the status, issues or revokes the metadata token and sets the boot purpose. The power half runs after the
commit, so no transaction stays open while a rack talks to a BMC; its outcome is recorded as a power event, and a
failed power-on fails the commissioning with a reason that says why.

The reaper runs in every replica. It claims overdue machines with ``FOR UPDATE SKIP LOCKED``: a machine another
replica is failing is skipped, and once failed it is no longer commissioning, so each timeout happens once.
"""

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.machines import BootPurpose, Machine, MachineAction, PowerType
from metalbus.contracts.power import PowerAction
from metalbus.db.pool import DbConnection
from metalbus_region import machine_store
from metalbus_region.context import RegionContext
from metalbus_region.database import RETRY_ERRORS
from metalbus_region.power_client import PowerClient, PowerOutcome, record_power_event
from metalbus_region.scripts import choose_scripts
from metalbus_region.tokens import issue_token
from metalbus_region.transitions import apply_action

log = structlog.get_logger("metalbus.region.commissioning")

# The database or the bus is away for a moment: the reaper tries again on its next round.
REAPER_ERRORS: tuple[type[BaseException], ...] = (MetalbusError, *RETRY_ERRORS)


async def begin_commissioning(
    conn: DbConnection,
    system_id: str,
    *,
    timeout_s: float | None,
    reason: str | None,
    scripts: Sequence[str] = (),
) -> Machine:
    """Inside the caller's transaction: COMMISSIONING with a deadline, a fresh metadata token, boot purpose
    commissioning, the operator's chosen ``scripts``. The machine is powered on after the commit
    (``Commissioning.power_on``)."""
    deadline = await machine_store.commissioning_deadline(conn, timeout_s)
    await apply_action(conn, system_id, MachineAction.COMMISSION, reason=reason, commissioning_deadline=deadline)
    await choose_scripts(conn, system_id, list(scripts))
    await issue_token(conn, system_id, expires_at=None)
    await machine_store.set_boot_purpose(conn, system_id, BootPurpose.COMMISSIONING)
    return await machine_store.get_machine(conn, system_id)


async def begin_abort(conn: DbConnection, system_id: str, *, reason: str | None) -> Machine:
    """Inside the caller's transaction: back to the previous status, token revoked, local boot. The machine is
    powered off after the commit (``Commissioning.power_off``)."""
    await apply_action(conn, system_id, MachineAction.ABORT, reason=reason)
    await machine_store.leave_commissioning(conn, system_id)
    return await machine_store.get_machine(conn, system_id)


class Commissioning:
    """The power half of commission and abort, run after their transaction committed."""

    def __init__(self, ctx: RegionContext, power: PowerClient) -> None:
        self._ctx = ctx
        self._power = power

    async def power_on(self, machine: Machine) -> Machine:
        """Power a machine that just entered commissioning on; if that fails, it fails commissioning (unless it
        has left that commissioning run meanwhile). Manual machines are powered by their operator."""
        if machine.power_type is PowerType.MANUAL or machine.commissioning_deadline is None:
            return machine
        outcome = await self._power.power(machine.system_id, PowerAction.ON, boot_from_network=True)
        async with self._ctx.database.connection() as conn, conn.transaction():
            await record_power_event(conn, outcome)
            if not outcome.succeeded and await machine_store.still_commissioning_until(
                conn, machine.system_id, machine.commissioning_deadline
            ):
                await apply_action(
                    conn,
                    machine.system_id,
                    MachineAction.COMMISSIONING_FAILED,
                    reason=f"power on failed: {outcome.error}",
                )
                await machine_store.leave_commissioning(conn, machine.system_id)
            current = await machine_store.get_machine(conn, machine.system_id)
        self._ctx.outbox.wake()
        return current

    async def power_off(self, machine: Machine, reason: str | None) -> Machine:
        """Power an aborted machine off; a failure is not an error: it is logged and becomes the status reason."""
        if machine.power_type is PowerType.MANUAL:
            return machine
        outcome = await self._power.power(machine.system_id, PowerAction.OFF)
        async with self._ctx.database.connection() as conn, conn.transaction():
            await record_power_event(conn, outcome)
            if not outcome.succeeded:
                await machine_store.note_status_reason(
                    conn, machine.system_id, machine.status, _power_off_reason(reason, outcome)
                )
            current = await machine_store.get_machine(conn, machine.system_id)
        self._ctx.outbox.wake()
        return current


def _power_off_reason(reason: str | None, outcome: PowerOutcome) -> str:
    failure = f"power off failed: {outcome.error}"
    return f"{reason}; {failure}" if reason else failure


async def reap_overdue(ctx: RegionContext) -> list[str]:
    """Fail every machine still commissioning past its deadline (one batch); returns their system ids."""
    async with ctx.database.connection() as conn, conn.transaction():
        overdue = await machine_store.claim_overdue(conn, ctx.settings.reaper_batch)
        for machine in overdue:
            await apply_action(
                conn,
                machine.system_id,
                MachineAction.COMMISSIONING_FAILED,
                reason=f"commissioning timed out: no result by {machine.deadline.isoformat()}",
            )
            await machine_store.leave_commissioning(conn, machine.system_id)
    failed = [machine.system_id for machine in overdue]
    if failed:
        ctx.outbox.wake()
        log.info("commissioning.timed_out", system_ids=failed, replica_id=ctx.settings.replica_id)
    return failed


async def run_reaper(ctx: RegionContext, stop: asyncio.Event) -> None:
    """Every ``reaper_interval_s`` until ``stop``: fail overdue commissioning machines, whatever else answers."""
    while not stop.is_set():
        if ctx.database.ready.is_set():
            try:
                await reap_overdue(ctx)
            except REAPER_ERRORS as error:
                log.warning("commissioning.reaper_failed", error=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ctx.settings.reaper_interval_s)
