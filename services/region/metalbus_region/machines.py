"""The machines area: create, get, list, and the operator actions (commission, abort, mark_broken, mark_fixed).

Create and actions take an idempotency key: a repeat is applied once. A repeated create answers with the machine
as first created; a repeated action answers with the machine as it is now (the power work that followed the
first may have moved it on). BMC secrets go in with create and never come out: no reply or log line holds them.
"""

import random

import structlog

from metalbus.contracts.errors import BadRequest, Conflict
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineEvent,
    MachineList,
    MachineListQuery,
    MachineQuery,
    MachineStatus,
)
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_MACHINE, MACHINE_ACTION, MACHINE_CREATE, MACHINE_GET, MACHINE_LIST
from metalbus_region import machine_store
from metalbus_region.commissioning import Commissioning, begin_abort, begin_commissioning
from metalbus_region.context import RegionContext, Route
from metalbus_region.idempotency import apply_once
from metalbus_region.machine_rows import insert_machine
from metalbus_region.outbox import record_event
from metalbus_region.power_client import PowerClient
from metalbus_region.transitions import apply_action

log = structlog.get_logger("metalbus.region.machines")

# Taken by the region when results (or a timeout) arrive, never asked for over the bus.
REGION_ONLY_ACTIONS = frozenset({MachineAction.COMMISSIONING_SUCCEEDED, MachineAction.COMMISSIONING_FAILED})


def routes(ctx: RegionContext) -> list[Route]:
    power = PowerClient(ctx.bus, ctx.database, timeout_s=ctx.settings.power_request_timeout_s, rng=random.Random())
    return MachineHandlers(ctx, Commissioning(ctx, power)).routes()


class MachineHandlers:
    def __init__(self, ctx: RegionContext, commissioning: Commissioning) -> None:
        self._ctx = ctx
        self._commissioning = commissioning

    def routes(self) -> list[Route]:
        return [
            (MACHINE_CREATE, self.create),
            (MACHINE_GET, self.get),
            (MACHINE_LIST, self.list_machines),
            (MACHINE_ACTION, self.action),
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
            return MachineList(machines=await machine_store.list_machines(conn, request.status))

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
    await record_event(
        conn,
        EVENT_MACHINE,
        lambda sequence, at: MachineEvent(
            sequence=sequence,
            system_id=machine.system_id,
            action=None,
            from_status=None,
            to_status=machine.status,
            at=at,
        ),
        system_id=machine.system_id,
    )
    return machine


async def _apply_action(conn: DbConnection, request: MachineActionRequest) -> Machine:
    """The database half of an action, inside the idempotency transaction."""
    if request.action is MachineAction.COMMISSION:
        return await begin_commissioning(
            conn, request.system_id, timeout_s=request.commissioning_timeout_s, reason=request.reason
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
