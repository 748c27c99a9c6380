"""API keys on every route, against a real region: 401 without, with a malformed or an unknown key; 503 when the
region cannot say; an accepted key is trusted for the cache's lifetime.

Also the harness the other api test modules use: a real region, an in-process api, and a key made through the
region subject API_KEY_CREATE.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from metalbus.bus import Bus
from metalbus.contracts.apikeys import ApiKeyCreate
from metalbus.subjects import API_KEY_CHECK, API_KEY_CREATE
from metalbus_api.app import create_app
from metalbus_api.settings import ApiSettings
from tests.conftest import NatsServer, free_port
from tests.integration.test_region import eventually, running_region

PUBLIC_PATHS = {"/api/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
UNKNOWN_KEY = "mb_zzzzzzzz_AbCdEfGhIjKlMnOpQrStUvWx0123"


@dataclass
class ApiStack:
    app: FastAPI
    client: httpx.AsyncClient  # sends the key
    bus: Bus  # a client of its own, to play other parties
    key: str
    nats: NatsServer


def api_settings(nats: NatsServer, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {"nats_url": nats.url, "region_timeout_s": 5, "roll_call_window_s": 0.2}
    return ApiSettings(**(values | overrides))


def authorized(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(bus: Bus, name: str = "api-tests") -> str:
    created = await eventually(
        lambda: bus.request(API_KEY_CREATE, ApiKeyCreate(name=name), timeout=2), lambda _: True, timeout=20
    )
    return created.key


@asynccontextmanager
async def in_process(app: FastAPI, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            yield client


@asynccontextmanager
async def api_stack(nats: NatsServer, dsn: str, **settings: Any) -> AsyncIterator[ApiStack]:
    """A region replica, a key, and the api in process (its client sends the key)."""
    async with running_region(nats, dsn, "r1"):
        bus = await Bus.connect(nats.options("api-test-party"))
        try:
            key = await create_key(bus)
            app = create_app(api_settings(nats, **settings))
            async with in_process(app, authorized(key)) as client:
                yield ApiStack(app=app, client=client, bus=bus, key=key, nats=nats)
        finally:
            await bus.drain()


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app (its lifespan already running, e.g. in ``api_stack``) behind a real uvicorn on a free loopback port:
    streams need a real server. Yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def route_table(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route the app serves; FastAPI >= 0.16x keeps included routers lazily."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes holds the routes themselves
        return [(route.path, set(getattr(route, "methods", None) or {"GET"})) for route in app.routes]  # type: ignore[attr-defined]
    return [(str(context.path), set(context.methods or {"GET"})) for context in iter_route_contexts(app.routes)]


def protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with sample parameters) of every route but the public ones."""
    samples = {"{system_id}": "x7kq2m", "{subnet_id}": "1", "{name}": "smart-health"}
    routes = []
    for path, methods in route_table(app):
        if path in PUBLIC_PATHS:
            continue
        for name, sample in samples.items():
            path = path.replace(name, sample)
        routes.extend((method, path) for method in sorted(methods - {"HEAD"}))
    return routes


def assert_unauthorized(response: httpx.Response, route: tuple[str, str]) -> None:
    assert response.status_code == 401, (route, response.status_code, response.text)
    assert response.headers["www-authenticate"] == "Bearer", route
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("unauthorized", False), route


async def test_every_route_but_health_and_the_docs_refuses_a_missing_malformed_or_unknown_key(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        routes = protected_routes(stack.app)
        assert len(routes) == 25
        transport = httpx.ASGITransport(app=stack.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as anonymous:
            for method, path in routes:
                for headers in (
                    {},
                    {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer"},
                    authorized("mb_not-a-key"),
                    authorized(UNKNOWN_KEY),
                ):
                    response = await anonymous.request(method, path, headers=headers)
                    assert_unauthorized(response, (method, path))
            for public in ("/api/v1/health", "/openapi.json", "/docs"):
                assert (await anonymous.get(public)).status_code == 200, public
        # The same routes with the key get past auth (whatever the region then says about x7kq2m).
        for method, path in routes:
            if path != "/api/v1/events/stream":
                response = await stack.client.request(method, path)
                assert response.status_code != 401, (method, path)


async def test_a_key_from_api_key_create_opens_the_api(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        response = await stack.client.get("/api/v1/machines")
        assert response.status_code == 200
        assert response.json() == {"items": [], "total": 0, "offset": 0, "limit": 100}


async def test_without_a_region_to_check_keys_the_answer_is_503_not_401(nats_server: NatsServer) -> None:
    app = create_app(api_settings(nats_server, retry_after_s=4))
    async with in_process(app, authorized(UNKNOWN_KEY)) as client:
        response = await client.get("/api/v1/machines")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "4"
    assert response.json()["error"]["code"] == "unavailable"
    assert response.json()["error"]["retryable"] is True


async def test_a_region_that_hears_but_does_not_answer_in_time_is_504(nats_server: NatsServer, bus: Bus) -> None:
    silent = await bus.client.subscribe(API_KEY_CHECK.pattern, queue="region")  # hears, never replies
    try:
        app = create_app(api_settings(nats_server, region_timeout_s=0.3))
        async with in_process(app, authorized(UNKNOWN_KEY)) as client:
            response = await client.get("/api/v1/subnets")
    finally:
        await silent.unsubscribe()
    assert response.status_code == 504
    assert response.json()["error"] == {
        "code": "timeout",
        "message": "no reply on region.apikeys.check within 0.3s",
        "retryable": True,
    }


async def test_an_accepted_key_is_trusted_for_the_cache_lifetime_and_only_then(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    for ttl_s, status_once_the_region_is_gone in ((60.0, 200), (0.0, 503)):
        app = create_app(api_settings(nats_server, auth_cache_ttl_s=ttl_s))
        async with in_process(app) as client:
            async with running_region(nats_server, database_dsn, "r1"):
                key = await create_key(bus)
                assert (await client.get("/metrics", headers=authorized(key))).status_code == 200
            # /metrics needs nothing from the region but the key check.
            response = await client.get("/metrics", headers=authorized(key))
        assert response.status_code == status_once_the_region_is_gone, ttl_s
