"""Machines: list (filtered, paged), create, read, change and delete."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import (
    Machine,
    MachineCreate,
    MachineListQuery,
    MachineQuery,
    MachineStatus,
    MachineUpdate,
)
from metalbus.subjects import MACHINE_CREATE, MACHINE_DELETE, MACHINE_GET, MACHINE_LIST, MACHINE_UPDATE
from metalbus_api.auth import require_api_key
from metalbus_api.bodies import MachinePatch
from metalbus_api.machine_routes_common import IdempotencyHeader, SystemIdPath, naming_current_status
from metalbus_api.openapi_responses import error_responses
from metalbus_api.region_client import Region

router = APIRouter(prefix="/api/v1", tags=["machines"], dependencies=[Depends(require_api_key)])


class MachinePage(BaseModel):
    items: list[Machine]
    total: int = Field(ge=0, description="Machines matching the filters, all pages together.")
    offset: int = Field(ge=0)
    limit: int = Field(ge=1)


@router.get("/machines", response_model=MachinePage, responses=error_responses(400))
async def list_machines(
    region: Region,
    status: MachineStatus | None = None,
    hostname: Annotated[str | None, Query(max_length=255, description="Exact hostname.")] = None,
    architecture: Architecture | None = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MachinePage:
    """Machines matching every filter given, ordered by hostname then system id."""
    query = MachineListQuery(status=status, hostname=hostname, architecture=architecture, offset=offset, limit=limit)
    page = await region.ask(MACHINE_LIST, query)
    return MachinePage(items=page.machines, total=page.total, offset=page.offset, limit=limit)


@router.post("/machines", status_code=201, response_model=Machine, responses=error_responses(400, 409))
async def create_machine(body: MachineCreate, region: Region, idempotency_key: IdempotencyHeader = None) -> Machine:
    """Add a machine (status new). ``power_secrets`` are stored apart and never returned."""
    if idempotency_key is not None:
        body = body.model_copy(update={"idempotency_key": idempotency_key})
    return await region.ask(MACHINE_CREATE, body)


@router.get("/machines/{system_id}", response_model=Machine, responses=error_responses(404))
async def get_machine(system_id: SystemIdPath, region: Region) -> Machine:
    return await region.ask(MACHINE_GET, MachineQuery(system_id=system_id))


@router.patch("/machines/{system_id}", response_model=Machine, responses=error_responses(400, 404, 409))
async def update_machine(
    system_id: SystemIdPath, body: MachinePatch, region: Region, idempotency_key: IdempotencyHeader = None
) -> Machine:
    """Change hostname, architecture, boot MAC or power settings; fields left out stay as they are."""
    fields = body.model_dump()
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    async with naming_current_status(region, system_id):
        return await region.ask(MACHINE_UPDATE, MachineUpdate(system_id=system_id, **fields))


@router.delete("/machines/{system_id}", status_code=204, response_class=Response, responses=error_responses(404, 409))
async def delete_machine(system_id: SystemIdPath, region: Region) -> Response:
    """Remove a machine (refused while it is commissioning)."""
    async with naming_current_status(region, system_id):
        await region.ask(MACHINE_DELETE, MachineQuery(system_id=system_id))
    return Response(status_code=204)
