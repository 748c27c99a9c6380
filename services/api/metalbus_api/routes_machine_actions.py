"""What operators do to a machine: commission (optionally waiting for the outcome), abort, mark broken or fixed,
power; and what commissioning learnt: inventory and script results."""

from fastapi import APIRouter, Depends, Request

from metalbus.contracts.machines import Machine, MachineAction, MachineActionRequest, MachineQuery
from metalbus.contracts.metadata import HardwareInventory, StoredScriptResult
from metalbus.contracts.power import MachinePowerRequest, PowerResult
from metalbus.subjects import MACHINE_ACTION, MACHINE_GET, MACHINE_INVENTORY, MACHINE_POWER, MACHINE_RESULTS
from metalbus_api.auth import require_api_key
from metalbus_api.bodies import ActionBody, CommissionBody, PowerBody
from metalbus_api.commission_wait import machine_changes, wait_until_settled
from metalbus_api.machine_routes_common import IdempotencyHeader, SystemIdPath, naming_current_status
from metalbus_api.openapi_responses import error_responses
from metalbus_api.region_client import Region, RegionClient
from metalbus_api.settings import ApiSettings

router = APIRouter(prefix="/api/v1", tags=["machine actions"], dependencies=[Depends(require_api_key)])

ACTION_ERRORS = error_responses(400, 404, 409)


def api_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def run_action(region: RegionClient, action: MachineActionRequest, *, timeout_s: float) -> Machine:
    async with naming_current_status(region, action.system_id):
        return await region.ask(MACHINE_ACTION, action, timeout_s=timeout_s)


@router.post("/machines/{system_id}/commission", response_model=Machine, responses=ACTION_ERRORS)
async def commission(
    system_id: SystemIdPath,
    region: Region,
    request: Request,
    body: CommissionBody | None = None,
    idempotency_key: IdempotencyHeader = None,
) -> Machine:
    """Start commissioning. With ``wait``, answer when the machine is ready or failed commissioning, or when
    ``wait_timeout_s`` has passed (then it is still commissioning)."""
    body = body or CommissionBody()
    settings = api_settings(request)
    action = MachineActionRequest(
        system_id=system_id,
        action=MachineAction.COMMISSION,
        reason=body.reason,
        commissioning_timeout_s=body.timeout_s,
        scripts=body.scripts,
        idempotency_key=idempotency_key,
    )
    if not body.wait:
        return await run_action(region, action, timeout_s=settings.power_timeout_s)
    async with machine_changes(region.bus, system_id) as next_change:
        machine = await run_action(region, action, timeout_s=settings.power_timeout_s)
        return await wait_until_settled(
            machine,
            read_machine=lambda: region.ask(MACHINE_GET, MachineQuery(system_id=system_id)),
            next_change=next_change,
            timeout_s=min(body.wait_timeout_s, settings.commission_wait_cap_s),
            poll_s=settings.commission_poll_s,
        )


async def simple_action(
    request: Request,
    region: RegionClient,
    system_id: str,
    action: MachineAction,
    body: ActionBody | None,
    idempotency_key: str | None,
) -> Machine:
    reason = body.reason if body else None
    message = MachineActionRequest(system_id=system_id, action=action, reason=reason, idempotency_key=idempotency_key)
    return await run_action(region, message, timeout_s=api_settings(request).power_timeout_s)


@router.post("/machines/{system_id}/abort", response_model=Machine, responses=ACTION_ERRORS)
async def abort(
    system_id: SystemIdPath,
    region: Region,
    request: Request,
    body: ActionBody | None = None,
    idempotency_key: IdempotencyHeader = None,
) -> Machine:
    """Stop commissioning: back to the previous status, powered off."""
    return await simple_action(request, region, system_id, MachineAction.ABORT, body, idempotency_key)


@router.post("/machines/{system_id}/mark-broken", response_model=Machine, responses=ACTION_ERRORS)
async def mark_broken(
    system_id: SystemIdPath,
    region: Region,
    request: Request,
    body: ActionBody | None = None,
    idempotency_key: IdempotencyHeader = None,
) -> Machine:
    return await simple_action(request, region, system_id, MachineAction.MARK_BROKEN, body, idempotency_key)


@router.post("/machines/{system_id}/mark-fixed", response_model=Machine, responses=ACTION_ERRORS)
async def mark_fixed(
    system_id: SystemIdPath,
    region: Region,
    request: Request,
    body: ActionBody | None = None,
    idempotency_key: IdempotencyHeader = None,
) -> Machine:
    """Back to the status the machine had before it was marked broken."""
    return await simple_action(request, region, system_id, MachineAction.MARK_FIXED, body, idempotency_key)


@router.post("/machines/{system_id}/power", response_model=PowerResult, responses=ACTION_ERRORS)
async def power(system_id: SystemIdPath, body: PowerBody, region: Region, request: Request) -> PowerResult:
    """Power on, off, cycle or query, through a rack that reaches the machine's BMC."""
    async with naming_current_status(region, system_id):
        return await region.ask(
            MACHINE_POWER,
            MachinePowerRequest(system_id=system_id, action=body.action),
            timeout_s=api_settings(request).power_timeout_s,
        )


@router.get("/machines/{system_id}/inventory", response_model=HardwareInventory, responses=error_responses(404))
async def inventory(system_id: SystemIdPath, region: Region) -> HardwareInventory:
    """What commissioning learnt about the machine (404 until it has been commissioned)."""
    return await region.ask(MACHINE_INVENTORY, MachineQuery(system_id=system_id))


@router.get("/machines/{system_id}/results", response_model=list[StoredScriptResult], responses=error_responses(404))
async def results(system_id: SystemIdPath, region: Region) -> list[StoredScriptResult]:
    """The machine's commissioning script results."""
    return (await region.ask(MACHINE_RESULTS, MachineQuery(system_id=system_id))).results
