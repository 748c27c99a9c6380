"""Commissioning scripts: operators add, read and remove them; a commission call names the ones it runs."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import Field

from metalbus.contracts.scripts import SCRIPT_NAME_PATTERN, CommissioningScript, ScriptListQuery, ScriptQuery
from metalbus.subjects import SCRIPT_DELETE, SCRIPT_LIST, SCRIPT_SET
from metalbus_api.auth import require_api_key
from metalbus_api.bodies import Body
from metalbus_api.openapi_responses import error_responses
from metalbus_api.region_client import Region

router = APIRouter(prefix="/api/v1", tags=["scripts"], dependencies=[Depends(require_api_key)])

ScriptNamePath = Annotated[str, Path(pattern=SCRIPT_NAME_PATTERN, description="The script's name.")]


class ScriptBody(Body):
    content: str = Field(description="The script, starting with its interpreter line (#!/bin/sh, …).")
    description: str = Field(default="", max_length=1000)
    timeout_s: int = Field(default=600, ge=1, le=24 * 3600, description="Killed (and failed) after this long.")


@router.get("/scripts", response_model=list[CommissioningScript], responses=error_responses())
async def list_scripts(region: Region) -> list[CommissioningScript]:
    return (await region.ask(SCRIPT_LIST, ScriptListQuery())).scripts


@router.put("/scripts/{name}", response_model=CommissioningScript, responses=error_responses(400))
async def set_script(name: ScriptNamePath, body: ScriptBody, region: Region) -> CommissioningScript:
    """Add the script, or replace the one of that name."""
    script = CommissioningScript(
        name=name, content=body.content, description=body.description, timeout_s=body.timeout_s
    )
    return await region.ask(SCRIPT_SET, script)


@router.delete("/scripts/{name}", response_model=CommissioningScript, responses=error_responses(404, 409))
async def delete_script(name: ScriptNamePath, region: Region) -> CommissioningScript:
    """Remove the script (refused while a commissioning machine runs it)."""
    return await region.ask(SCRIPT_DELETE, ScriptQuery(name=name))
