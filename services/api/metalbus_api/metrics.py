"""Prometheus metrics of the api: requests by route and status, their latency, region errors, open streams.

Each app owns its registry (several apps may live in one process, e.g. in tests); ``routes_metrics`` serves it.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED_ROUTE = "<unmatched>"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "metalbus_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "metalbus_api_request_duration_seconds",
            "Time to answer an HTTP request (to the end of the body), by route template and method.",
            ["method", "route"],
            registry=self.registry,
        )
        self.region_errors = Counter(
            "metalbus_api_region_errors",
            "Region requests that failed, by subject and error code.",
            ["subject", "code"],
            registry=self.registry,
        )
        self.open_event_streams = Gauge(
            "metalbus_api_event_streams_open", "Server-sent event streams open now.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else UNMATCHED_ROUTE


class RecordRequests:
    """ASGI middleware: count every HTTP answer and time it, labelled by the route's template (not the raw path,
    so ids do not explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - started)
