"""Wiring of one region replica: bus, database, handlers; runs until asked to stop."""

import asyncio
import contextlib

import structlog

from metalbus.bus import Bus
from metalbus.subjects import RACK_ANNOUNCE, RACK_HEARTBEAT, RACK_LIST, REGION_HEALTH, REGION_ROLL_CALL
from metalbus_region.database import Database
from metalbus_region.handlers import RegionHandlers
from metalbus_region.settings import RegionSettings

log = structlog.get_logger("metalbus.region")


async def serve_region(settings: RegionSettings, stop: asyncio.Event) -> None:
    bus = await Bus.connect(
        settings.connect_options(f"region:{settings.replica_id}"), max_concurrency=settings.max_concurrency
    )
    database = Database(
        settings.database_dsn, pool_max=settings.database_pool_max, timeout_s=settings.database_timeout_s
    )
    handlers = RegionHandlers(replica_id=settings.replica_id, database=database, bus=bus)
    await bus.ensure_streams()
    connecting = asyncio.create_task(database.connect_and_migrate(), name="region-database")
    await bus.serve(REGION_HEALTH, handlers.health)
    await bus.serve(REGION_ROLL_CALL, handlers.roll_call)
    await bus.serve(RACK_ANNOUNCE, handlers.announce)
    await bus.serve(RACK_HEARTBEAT, handlers.heartbeat)
    await bus.serve(RACK_LIST, handlers.list_racks)
    log.info("region.serving", replica_id=settings.replica_id)
    try:
        await stop.wait()
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await bus.drain()
        await database.close()
        log.info("region.stopped", replica_id=settings.replica_id)
