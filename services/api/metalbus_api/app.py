"""The FastAPI application factory: bus connection and shared state in the lifespan, routers, error mapping,
metrics. Every route but ``GET /api/v1/health`` (and the OpenAPI document and its /docs page) needs an API key."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from metalbus import __version__
from metalbus.bus import Bus
from metalbus_api import (
    health,
    routes_boot,
    routes_events,
    routes_machine_actions,
    routes_machines,
    routes_metrics,
    routes_network,
    routes_scripts,
)
from metalbus_api.auth import ApiKeyCache
from metalbus_api.errors import CatchAllErrors, install_error_handlers
from metalbus_api.event_store import EventReader
from metalbus_api.metrics import ApiMetrics, RecordRequests
from metalbus_api.region_client import RegionClient
from metalbus_api.routes_events import EventStreams
from metalbus_api.settings import ApiSettings

DESCRIPTION = (
    "The HTTP API of metalbus: machines, their commissioning and power, subnets, racks, leases, boot resources "
    "and the event stream. Authenticate with `Authorization: Bearer mb_<key_id>_<secret>`. Every error answer "
    'is `{"error": {"code", "message", "retryable", …}}`.'
)


def create_app(settings: ApiSettings) -> FastAPI:
    api_metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bus = await Bus.connect(settings.connect_options("api"))
        app.state.settings = settings
        app.state.bus = bus
        app.state.metrics = api_metrics
        app.state.region = RegionClient(bus, api_metrics, timeout_s=settings.region_timeout_s)
        app.state.api_keys = ApiKeyCache(ttl_s=settings.auth_cache_ttl_s, max_keys=settings.auth_cache_max_keys)
        app.state.events = EventReader(bus, timeout_s=settings.jetstream_timeout_s)
        app.state.event_streams = EventStreams(api_metrics, limit=settings.event_streams_max)
        try:
            yield
        finally:
            await app.state.event_streams.close_all()
            await bus.drain()

    app = FastAPI(
        title="metalbus",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    install_error_handlers(app, retry_after_s=settings.retry_after_s)
    app.add_middleware(CatchAllErrors)
    app.add_middleware(RecordRequests, metrics=api_metrics)
    for router in (
        health.router,
        routes_machines.router,
        routes_machine_actions.router,
        routes_network.router,
        routes_boot.router,
        routes_scripts.router,
        routes_events.router,
        routes_metrics.router,
    ):
        app.include_router(router)
    return app
