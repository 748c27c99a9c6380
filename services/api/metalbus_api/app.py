"""The FastAPI application: bus connection in the lifespan, typed errors mapped to HTTP statuses."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from metalbus import __version__
from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus_api import health
from metalbus_api.settings import ApiSettings


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.bus = await Bus.connect(settings.connect_options("api"))
        try:
            yield
        finally:
            await app.state.bus.drain()

    app = FastAPI(title="metalbus", version=__version__, lifespan=lifespan)

    @app.exception_handler(MetalbusError)
    async def metalbus_error(_: Request, error: MetalbusError) -> JSONResponse:
        return JSONResponse(
            status_code=error.http_status,
            content={"error": error.to_envelope().model_dump(mode="json")},
        )

    app.include_router(health.router)
    return app
