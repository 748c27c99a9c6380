"""GET /api/v1/health aggregates NATS, PostgreSQL, region replicas and racks into one verdict."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from metalbus.bus import Bus
from metalbus.contracts.racks import RackServiceKind
from metalbus.rack_presence import RackServiceSettings, keep_present
from metalbus.subjects import RACK_ANNOUNCE
from metalbus_api.app import create_app
from metalbus_api.settings import ApiSettings
from tests.conftest import NatsServer
from tests.integration.test_region import ANNOUNCEMENT, eventually, running_region


@asynccontextmanager
async def api_client(nats: NatsServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiSettings(nats_url=nats.url, roll_call_window_s=0.2, region_timeout_s=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def test_without_a_region_health_is_503_degraded_with_reasons(nats_server: NatsServer) -> None:
    async with api_client(nats_server) as client:
        response = await client.get("/api/v1/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["nats"] == {"ok": True, "detail": "connected"}
    assert body["replicas"] == []
    assert body["region_error"].startswith("unavailable: no service is answering on region.health.get")
    assert body["database"]["ok"] is False


async def test_with_region_and_a_present_rack_health_is_200_ok(nats_server: NatsServer, database_dsn: str) -> None:
    stop = asyncio.Event()
    rack = RackServiceSettings(nats_url=nats_server.url, rack_id="rack-3", heartbeat_interval_s=0.5)
    rack_bus = await Bus.connect(rack.connect_options("rack"))
    async with running_region(nats_server, database_dsn, "r1"), api_client(nats_server) as client:
        presence = asyncio.create_task(keep_present(rack_bus, RackServiceKind.POWER, rack, stop))
        try:
            response = await eventually(
                lambda: client.get("/api/v1/health"),
                lambda r: r.status_code == 200 and bool(r.json()["racks"]),
                timeout=15,
            )
        finally:
            stop.set()
            await presence
            await rack_bus.drain()
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert [r["replica_id"] for r in body["replicas"]] == ["r1"]
    [rack_status] = body["racks"]
    assert rack_status["rack_id"] == "rack-3"
    assert [(s["service"], s["healthy"]) for s in rack_status["services"]] == [("rack-power", True)]


async def test_a_silent_rack_service_makes_health_503_degraded(nats_server: NatsServer, database_dsn: str) -> None:
    async with running_region(nats_server, database_dsn, "r1"), api_client(nats_server) as client:
        bus = await Bus.connect(nats_server.options("rack"))
        try:
            await eventually(lambda: bus.request(RACK_ANNOUNCE, ANNOUNCEMENT, timeout=2), lambda a: True)
        finally:
            await bus.drain()
        assert (await client.get("/api/v1/health")).status_code == 200
        conn = await asyncpg.connect(database_dsn)
        try:
            await conn.execute("UPDATE rack_services SET last_seen = now() - interval '1 hour'")
        finally:
            await conn.close()
        response = await client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["racks"][0]["services"][0]["healthy"] is False
