"""The network the region manages: subnets (list, add, change their range), racks and DHCP leases."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from metalbus.contracts.common import MacAddress
from metalbus.contracts.leases import (
    Lease,
    LeaseListQuery,
    Subnet,
    SubnetCreate,
    SubnetListQuery,
    SubnetUpdate,
)
from metalbus.contracts.racks import RackListQuery, RackStatus
from metalbus.subjects import LEASE_LIST, RACK_LIST, SUBNET_CREATE, SUBNET_LIST, SUBNET_UPDATE
from metalbus_api.auth import require_api_key
from metalbus_api.bodies import SubnetPatch
from metalbus_api.openapi_responses import error_responses
from metalbus_api.region_client import Region

router = APIRouter(prefix="/api/v1", tags=["network"], dependencies=[Depends(require_api_key)])

INT32_MAX = 2**31 - 1
SubnetIdPath = Annotated[int, Path(ge=1, le=INT32_MAX)]


@router.get("/subnets", response_model=list[Subnet], responses=error_responses())
async def list_subnets(region: Region) -> list[Subnet]:
    return (await region.ask(SUBNET_LIST, SubnetListQuery())).subnets


@router.post("/subnets", status_code=201, response_model=Subnet, responses=error_responses(400, 409))
async def create_subnet(body: SubnetCreate, region: Region) -> Subnet:
    """Add a subnet with its dynamic range and reserved addresses."""
    return await region.ask(SUBNET_CREATE, body)


@router.patch("/subnets/{subnet_id}", response_model=Subnet, responses=error_responses(400, 404, 409))
async def update_subnet(subnet_id: SubnetIdPath, body: SubnetPatch, region: Region) -> Subnet:
    """Change a subnet's dynamic range and options; fields left out stay as they are."""
    return await region.ask(SUBNET_UPDATE, SubnetUpdate(subnet_id=subnet_id, **body.model_dump()))


@router.get("/racks", response_model=list[RackStatus], responses=error_responses())
async def list_racks(region: Region) -> list[RackStatus]:
    """Every rack with each service's health, interfaces and the managed subnets it serves."""
    return (await region.ask(RACK_LIST, RackListQuery())).racks


@router.get("/leases", response_model=list[Lease], responses=error_responses(400))
async def list_leases(
    region: Region,
    subnet_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    mac: MacAddress | None = None,
    active_only: bool = True,
) -> list[Lease]:
    """Leases by subnet or MAC; by default only unexpired offered, bound or declined ones."""
    query = LeaseListQuery(subnet_id=subnet_id, mac=mac, active_only=active_only)
    return (await region.ask(LEASE_LIST, query)).leases
