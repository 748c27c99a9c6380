"""Wiring of one region replica: bus, database, every handler module, background tasks; runs until stopped."""

import asyncio
import contextlib

import structlog

from metalbus.bus import Bus
from metalbus.metrics_endpoint import serving_metrics
from metalbus_region import (
    apikeys,
    boot,
    boot_transfers,
    commissioning,
    dns_zones,
    lease_batches,
    leases,
    machines,
    metadata,
    power_polling,
    scripts,
    syslog_intake,
)
from metalbus_region.context import RegionContext, Route
from metalbus_region.database import Database
from metalbus_region.handlers import RegionHandlers
from metalbus_region.metrics import RegionMetrics, sample_outbox_backlog
from metalbus_region.outbox import OutboxPublisher
from metalbus_region.settings import RegionSettings

log = structlog.get_logger("metalbus.region")


def all_routes(ctx: RegionContext) -> list[Route]:
    return [
        *RegionHandlers(ctx).routes(),
        *machines.routes(ctx),
        *leases.routes(ctx),
        *lease_batches.routes(ctx),
        *boot.routes(ctx),
        *boot_transfers.routes(ctx),
        *metadata.routes(ctx),
        *apikeys.routes(ctx),
        *power_polling.routes(ctx),
        *dns_zones.routes(ctx),
        *syslog_intake.routes(ctx),
        *scripts.routes(ctx),
    ]


async def serve_region(settings: RegionSettings, stop: asyncio.Event) -> None:
    bus = await Bus.connect(
        settings.connect_options(f"region:{settings.replica_id}"), max_concurrency=settings.max_concurrency
    )
    database = Database(
        settings.database_dsn, pool_max=settings.database_pool_max, timeout_s=settings.database_timeout_s
    )
    ctx = RegionContext(
        settings=settings,
        database=database,
        bus=bus,
        outbox=OutboxPublisher(database, bus, retention_s=settings.outbox_retention_s),
    )
    metrics = RegionMetrics()
    metrics.watch(ctx.outbox, database)
    await bus.ensure_streams(replicas=settings.events_stream_replicas)
    background = [
        asyncio.create_task(database.connect_and_migrate(), name="region-database"),
        asyncio.create_task(ctx.outbox.run(stop), name="region-outbox"),
        asyncio.create_task(commissioning.run_reaper(ctx, stop), name="region-reaper"),
    ]
    if settings.metrics_port:
        sampler = sample_outbox_backlog(database, metrics.outbox_backlog, stop)
        background.append(asyncio.create_task(sampler, name="region-outbox-backlog"))
    try:
        async with serving_metrics(metrics.registry, settings.metrics_address, settings.metrics_port):
            for subject, handler in all_routes(ctx):
                await bus.serve(subject, metrics.instrumented(subject, handler))
            log.info("region.serving", replica_id=settings.replica_id)
            await stop.wait()
    except OSError as error:
        raise SystemExit(f"metalbus-region: cannot serve metrics on port {settings.metrics_port}: {error}") from None
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.drain()
        await database.close()
        log.info("region.stopped", replica_id=settings.replica_id)
