"""GET /api/v1/health: NATS, PostgreSQL (through the region), region replicas and racks in one report."""

import asyncio
from enum import StrEnum

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.health import HealthQuery, RegionHealth, ReplicaPresent, ReplicaRollCall
from metalbus.contracts.racks import RackListQuery, RackStatus
from metalbus.subjects import RACK_LIST, REGION_HEALTH, REGION_ROLL_CALL
from metalbus_api.settings import ApiSettings

router = APIRouter()


class Overall(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"


class ComponentCheck(BaseModel):
    ok: bool
    detail: str


class HealthReport(BaseModel):
    status: Overall
    nats: ComponentCheck
    database: ComponentCheck
    region: RegionHealth | None
    region_error: str | None
    replicas: list[ReplicaPresent]
    racks: list[RackStatus]
    racks_error: str | None


def summarise_database(region: RegionHealth | None) -> ComponentCheck:
    if region is None:
        return ComponentCheck(ok=False, detail="unknown: no region replica answered")
    if not region.database_reachable:
        return ComponentCheck(ok=False, detail=f"unreachable: {region.database_error}")
    if region.migration_level != region.migration_target:
        return ComponentCheck(
            ok=False, detail=f"migrations at {region.migration_level}, expected {region.migration_target}"
        )
    return ComponentCheck(ok=True, detail=f"reachable, migrations at {region.migration_level}")


async def collect_health(bus: Bus, settings: ApiSettings) -> HealthReport:
    region: RegionHealth | None = None
    region_error: str | None = None
    racks: list[RackStatus] = []
    racks_error: str | None = None

    async def ask_region() -> None:
        nonlocal region, region_error
        try:
            region = await bus.request(REGION_HEALTH, HealthQuery(), timeout=settings.region_timeout_s)
        except MetalbusError as error:
            region_error = f"{error.code.value}: {error.message}"

    async def ask_racks() -> None:
        nonlocal racks, racks_error
        try:
            racks = (await bus.request(RACK_LIST, RackListQuery(), timeout=settings.region_timeout_s)).racks
        except MetalbusError as error:
            racks_error = f"{error.code.value}: {error.message}"

    replicas: list[ReplicaPresent] = []
    if bus.connected:
        _, _, replicas = await asyncio.gather(
            ask_region(),
            ask_racks(),
            bus.gather(REGION_ROLL_CALL, ReplicaRollCall(), window=settings.roll_call_window_s),
        )
    nats = ComponentCheck(ok=bus.connected, detail="connected" if bus.connected else "disconnected")
    database = summarise_database(region)
    every_rack_service_healthy = all(service.healthy for rack in racks for service in rack.services)
    healthy = nats.ok and database.ok and bool(replicas) and racks_error is None and every_rack_service_healthy
    return HealthReport(
        status=Overall.OK if healthy else Overall.DEGRADED,
        nats=nats,
        database=database,
        region=region,
        region_error=region_error,
        replicas=sorted(replicas, key=lambda r: r.replica_id),
        racks=racks,
        racks_error=racks_error,
    )


@router.get(
    "/api/v1/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "degraded: the same report, naming what is wrong"}},
)
async def get_health(request: Request, response: Response) -> HealthReport:
    """200 when everything answers, 503 (same body) when something is degraded."""
    report = await collect_health(request.app.state.bus, request.app.state.settings)
    response.status_code = 200 if report.status is Overall.OK else 503
    return report
