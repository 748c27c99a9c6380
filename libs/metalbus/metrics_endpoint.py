"""Serve one Prometheus ``CollectorRegistry`` at ``GET /metrics`` from inside a rack service's asyncio loop.

A deliberately small HTTP/1.0-style responder (one request per connection, then close): it runs in the service's
own loop, so collectors that read the service's in-process counters at scrape time never race a writer thread.
Anything but ``GET /metrics`` is answered 404 (other paths) or 405 (other methods); a request that does not
arrive whole within ``REQUEST_TIMEOUT_S`` or exceeds ``MAX_REQUEST_HEAD_BYTES`` is dropped.
``serving_metrics(registry, host, port)`` is what services use: port 0 means disabled. Every metric name starts
with ``metric_prefix(<service>)`` (``metalbus_<service>_``), one of ``SERVICES``.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("metalbus.metrics")

METRICS_PATH = "/metrics"
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_HEAD_BYTES = 8192
SERVICES = ("region", "api", "rack_dhcp", "rack_tftp", "rack_power", "rack_proxy")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def metric_prefix(service: str) -> str:
    """``rack_dhcp`` → ``metalbus_rack_dhcp_``: what every metric name of that service starts with."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return f"metalbus_{service}_"


class MetricsEndpoint:
    """A listening socket that answers scrapes of ``registry``; ``port`` is the bound port once started."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics endpoint is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port, see ``port``); OSError when the address is taken."""
        self._server = await asyncio.start_server(self._answer, host, port, limit=MAX_REQUEST_HEAD_BYTES)

    async def close(self) -> None:
        """Stop listening and wait for the scrapes being answered."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, body = self._response_to(head)
            writer.write(_response(status, body))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as error:
            log.debug("metrics.request_dropped", error=repr(error))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), REQUEST_TIMEOUT_S)

    def _response_to(self, head: bytes) -> tuple[int, bytes]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request_line) != 3:
            return 400, b"bad request line\n"
        method, target, _ = request_line
        if target.split("?", 1)[0] != METRICS_PATH:
            return 404, b"not found; metrics are at /metrics\n"
        if method != "GET":
            return 405, b"only GET\n"
        return 200, generate_latest(self.registry)


def _response(status: int, body: bytes) -> bytes:
    content_type = CONTENT_TYPE_LATEST if status == 200 else "text/plain; charset=utf-8"
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@contextlib.asynccontextmanager
async def serving_metrics(registry: CollectorRegistry, host: str, port: int) -> AsyncIterator[MetricsEndpoint | None]:
    """``registry`` at ``http://host:port/metrics`` for the duration of the block; nothing (None) when port is 0."""
    if port == 0:
        yield None
        return
    endpoint = MetricsEndpoint(registry)
    await endpoint.start(host, port)
    log.info("metrics.serving", host=host, port=endpoint.port, path=METRICS_PATH)
    try:
        yield endpoint
    finally:
        await endpoint.close()


class FlatCountersCollector(Collector):
    """A counters dataclass read at scrape time (it stays the one record; nothing is counted twice): each int
    field as ``<prefix>_<field>_total``, each mapping of counts (``Counter``, ``dict``) as the same name with the
    key in a ``kind`` label. Other fields are left out."""

    def __init__(self, prefix: str, counters: object, documentation: str) -> None:
        if not dataclasses.is_dataclass(counters):
            raise TypeError(f"{type(counters).__name__} is not a dataclass")
        self.prefix = prefix
        self.counters = counters
        self.documentation = documentation

    def collect(self) -> Iterator[Metric]:
        for field in dataclasses.fields(self.counters):
            value = getattr(self.counters, field.name)
            name, documentation = f"{self.prefix}_{field.name}", f"{self.documentation}: {field.name}"
            if isinstance(value, int) and not isinstance(value, bool):
                yield CounterMetricFamily(name, documentation, value)
            elif isinstance(value, Mapping) and all(isinstance(count, int) for count in value.values()):
                family = CounterMetricFamily(name, documentation, labels=["kind"])
                for key, count in sorted(value.items(), key=lambda item: str(item[0])):
                    family.add_metric([str(key)], count)
                yield family
