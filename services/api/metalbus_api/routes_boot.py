"""Boot resources: the kernel, initrd and squashfs each architecture boots for each purpose."""

from fastapi import APIRouter, Depends

from metalbus.contracts.boot import BootResource, BootResourceListQuery
from metalbus.subjects import BOOT_RESOURCE_LIST, BOOT_RESOURCE_SET
from metalbus_api.auth import require_api_key
from metalbus_api.openapi_responses import error_responses
from metalbus_api.region_client import Region

router = APIRouter(prefix="/api/v1", tags=["boot"], dependencies=[Depends(require_api_key)])


@router.get("/boot-resources", response_model=list[BootResource], responses=error_responses())
async def list_boot_resources(region: Region) -> list[BootResource]:
    return (await region.ask(BOOT_RESOURCE_LIST, BootResourceListQuery())).resources


@router.put("/boot-resources", response_model=BootResource, responses=error_responses(400))
async def set_boot_resource(body: BootResource, region: Region) -> BootResource:
    """Set (or replace) the resource of the body's architecture and purpose."""
    return await region.ask(BOOT_RESOURCE_SET, body)
