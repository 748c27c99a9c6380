"""The machines area: create, get, list (paged), update, delete, the operator actions (commission, abort,
mark_broken, mark_fixed), power commands, and the inventory and results commissioning stored.

Create, update and actions take an idempotency key: a repeat is applied once. A repeated create or update answers
with the machine as the first made it; a repeated action answers with the machine as it is now (the power work
that followed the first may have moved it on). BMC secrets go in with create and update and never come out: no
reply or log line holds them.
"""

import random

import structlog

from metalbus.contracts.errors import BadRequest, Conflict, Unavailable
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineDeleted,
    MachineList,
    MachineListQuery,
    MachineQuery,
    MachineStatus,
    MachineUpdate,
    PowerType,
)
from metalbus.contracts.metadata import HardwareInventory, ScriptResultList
from metalbus.contracts.power import MachinePowerRequest, PowerResult
from metalbus.db.pool import DbConnection
from metalbus.subjects import (
    MACHINE_ACTION,
    MACHINE_CREATE,
    MACHINE_DELETE,
    MACHINE_GET,
    MACHINE_INVENTORY,
    MACHINE_LIST,
    MACHINE_POWER,
    MACHINE_RESULTS,
    MACHINE_UPDATE,
)
from metalbus_region import machine_store, results_store
from metalbus_region.commissioning import Commissioning, begin_abort, begin_commissioning
from metalbus_region.context import RegionContext, Route
from metalbus_region.idempotency import apply_once
from metalbus_region.machine_rows import insert_machine
from metalbus_region.power_client import PowerClient, record_power_event
from metalbus_region.transitions import apply_action, record_machine_event

log = structlog.get_logger("metalbus.region.machines")

# Taken by the region when results (or a timeout) arrive, never asked for over the bus.
REGION_ONLY_ACTIONS = frozenset({MachineAction.COMMISSIONING_SUCCEEDED, MachineAction.COMMISSIONING_FAILED})


def routes(ctx: RegionContext) -> list[Route]:
    power = PowerClient(ctx.bus, ctx.database, timeout_s=ctx.settings.power_request_timeout_s, rng=random.Random())
    return MachineHandlers(ctx, Commissioning(ctx, power), power).routes()


class MachineHandlers:
    def __init__(self, ctx: RegionContext, commissioning: Commissioning, power: PowerClient) -> None:
        self._ctx = ctx
        self._commissioning = commissioning
        self._power = power

    def routes(self) -> list[Route]:
        return [
            (MACHINE_CREATE, self.create),
            (MACHINE_GET, self.get),
            (MACHINE_LIST, self.list_machines),
            (MACHINE_ACTION, self.action),
            (MACHINE_UPDATE, self.update),
            (MACHINE_DELETE, self.delete),
            (MACHINE_POWER, self.power),
            (MACHINE_INVENTORY, self.inventory),
            (MACHINE_RESULTS, self.results),
        ]

    async def create(self, request: MachineCreate) -> Machine:
        async with self._ctx.database.connection() as conn:
            machine = await apply_once(
                conn,
                request.idempotency_key,
                MACHINE_CREATE.pattern,
                Machine,
                lambda conn: _insert_and_record(conn, request),
            )
        self._ctx.outbox.wake()
        log.info("machine.created", system_id=machine.system_id, hostname=machine.hostname)
        return machine

    async def get(self, request: MachineQuery) -> Machine:
        async with self._ctx.database.connection() as conn:
            return await machine_store.get_machine(conn, request.system_id)

    async def list_machines(self, request: MachineListQuery) -> MachineList:
        async with self._ctx.database.connection() as conn:
            return await machine_store.list_machines(conn, request)

    async def update(self, request: MachineUpdate) -> Machine:
        fields = sorted(_changed_fields(request))

        async def update_and_record(conn: DbConnection) -> Machine:
            machine = await machine_store.update_machine(conn, request)
            await _record_unchanged_status(conn, machine.system_id, machine.status, f"updated: {', '.join(fields)}")
            return machine

        async with self._ctx.database.connection() as conn:
            machine = await apply_once(
                conn, request.idempotency_key, MACHINE_UPDATE.pattern, Machine, update_and_record
            )
        self._ctx.outbox.wake()
        log.info("machine.updated", system_id=machine.system_id, fields=fields)
        return machine

    async def delete(self, request: MachineQuery) -> MachineDeleted:
        async with self._ctx.database.connection() as conn, conn.transaction():
            machine = await machine_store.get_machine(conn, request.system_id)
            await machine_store.delete_machine(conn, request.system_id)
            await _record_unchanged_status(conn, machine.system_id, machine.status, "deleted")
        self._ctx.outbox.wake()
        log.info("machine.deleted", system_id=request.system_id)
        return MachineDeleted(system_id=request.system_id)

    async def power(self, request: MachinePowerRequest) -> PowerResult:
        """Through a rack that reaches the BMC (the commissioning power client); the outcome is a power event.
        A failure (no rack reaches the BMC or answers, the BMC refuses) is Unavailable with the reason."""
        async with self._ctx.database.connection() as conn:
            machine = await machine_store.get_machine(conn, request.system_id)
        if machine.power_type is PowerType.MANUAL:
            raise BadRequest("manual power: the operator powers this machine")
        outcome = await self._power.power(request.system_id, request.action)
        async with self._ctx.database.connection() as conn, conn.transaction():
            await record_power_event(conn, outcome)
        self._ctx.outbox.wake()
        if not outcome.succeeded:
            raise Unavailable(f"power {request.action.value} of {request.system_id} failed: {outcome.error}")
        return PowerResult(system_id=request.system_id, state=outcome.state)

    async def inventory(self, request: MachineQuery) -> HardwareInventory:
        async with self._ctx.database.connection() as conn:
            return await results_store.read_inventory(conn, request.system_id)

    async def results(self, request: MachineQuery) -> ScriptResultList:
        async with self._ctx.database.connection() as conn:
            return await results_store.read_results(conn, request.system_id)

    async def action(self, request: MachineActionRequest) -> Machine:
        if request.action in REGION_ONLY_ACTIONS:
            raise BadRequest(f"{request.action.value} is taken by the region, not requested")
        applied = False

        async def apply(conn: DbConnection) -> Machine:
            nonlocal applied
            applied = True
            return await _apply_action(conn, request)

        async with self._ctx.database.connection() as conn:
            machine = await apply_once(conn, request.idempotency_key, MACHINE_ACTION.pattern, Machine, apply)
            if not applied:
                return await _repeated(conn, request, machine)
        self._ctx.outbox.wake()
        log.info("machine.action", system_id=machine.system_id, action=request.action.value, status=machine.status)
        if request.action is MachineAction.COMMISSION:
            return await self._commissioning.power_on(machine)
        if request.action is MachineAction.ABORT:
            return await self._commissioning.power_off(machine, request.reason)
        return machine


def _changed_fields(request: MachineUpdate) -> set[str]:
    """Names of the fields an update changes (for the log line; values, secrets above all, stay out of it)."""
    return set(request.model_dump(exclude_none=True)) - {"schema_version", "system_id", "idempotency_key"}


async def _insert_and_record(conn: DbConnection, request: MachineCreate) -> Machine:
    machine = await insert_machine(
        conn,
        hostname=request.hostname,
        architecture=request.architecture,
        boot_mac=request.boot_mac,
        power_type=request.power_type,
        power_parameters=request.power_parameters,
        power_secrets=request.power_secrets,
    )
    await record_machine_event(
        conn, machine.system_id, action=None, from_status=None, to_status=machine.status, reason=None
    )
    return machine


async def _record_unchanged_status(conn: DbConnection, system_id: str, status: MachineStatus, reason: str) -> None:
    """A machine event for a change that keeps the status (an update, a deletion): racks that cached what the
    machine boots drop it, event followers see it."""
    await record_machine_event(conn, system_id, action=None, from_status=status, to_status=status, reason=reason)


async def _apply_action(conn: DbConnection, request: MachineActionRequest) -> Machine:
    """The database half of an action, inside the idempotency transaction."""
    if request.action is MachineAction.COMMISSION:
        return await begin_commissioning(
            conn,
            request.system_id,
            timeout_s=request.commissioning_timeout_s,
            reason=request.reason,
            scripts=request.scripts,
        )
    if request.action is MachineAction.ABORT:
        return await begin_abort(conn, request.system_id, reason=request.reason)
    event = await apply_action(conn, request.system_id, request.action, reason=request.reason)
    if event.from_status is MachineStatus.COMMISSIONING:
        await machine_store.leave_commissioning(conn, request.system_id)
    return await machine_store.get_machine(conn, request.system_id)


async def _repeated(conn: DbConnection, request: MachineActionRequest, first: Machine) -> Machine:
    if first.system_id != request.system_id:
        raise Conflict(f"idempotency key {request.idempotency_key!r} was used for machine {first.system_id}")
    return await machine_store.get_machine(conn, request.system_id)
