"""The region's Prometheus metrics: every request by subject and outcome, its handling time, the outbox and the pool.

Requests are counted at the one place they are dispatched: ``RegionMetrics.instrumented`` wraps each route's
handler before ``bus.serve``, so no handler knows about metrics. The same wrapper binds the request's
``system_id`` (when its model has one) into structlog's context, so every line logged while handling a request
about a machine names it. The outbox's published count and the pool's sizes are read at scrape time; the backlog
(unpublished events) needs a query, so ``sample_outbox_backlog`` refreshes it in the background.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metalbus.contracts.errors import MetalbusError
from metalbus.metrics_endpoint import metric_prefix
from metalbus.subjects import RequestSubject
from metalbus_region.database import RETRY_ERRORS, Database
from metalbus_region.outbox import OutboxPublisher

PREFIX = metric_prefix("region")
OK = "ok"
UNEXPECTED = "internal"  # an exception that is not a MetalbusError: the bus answers it as `internal`
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BACKLOG_SAMPLE_S = 5.0
# PostgreSQL away: keep the last value, sample again next time.
BACKLOG_ERRORS: tuple[type[BaseException], ...] = (MetalbusError, *RETRY_ERRORS)

log = structlog.get_logger("metalbus.region.metrics")

Handler = Callable[[Any], Awaitable[Any]]


class RegionMetrics:
    """One replica's registry; ``watch`` adds the outbox and database once they exist."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter(
            PREFIX + "requests",
            "Requests handled, by subject pattern and outcome (ok, or the error code answered).",
            ["subject", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "Time a handler took to answer (errors included), by subject pattern.",
            ["subject"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            PREFIX + "outbox_backlog_events",
            "Events recorded but not yet published to JetStream (sampled every few seconds).",
            registry=self.registry,
        )

    def watch(self, outbox: OutboxPublisher, database: Database) -> None:
        self.registry.register(OutboxAndPoolCollector(outbox, database))

    def instrumented(self, subject: RequestSubject[Any, Any], handler: Handler) -> Handler:
        """``handler`` counted, timed, and with the request's machine bound into the log context."""
        pattern = subject.pattern

        async def handle(request: Any) -> Any:
            system_id = getattr(request, "system_id", None)
            if isinstance(system_id, str):
                structlog.contextvars.bind_contextvars(system_id=system_id)
            started, outcome = self.clock(), UNEXPECTED
            try:
                reply = await handler(request)
                outcome = OK
                return reply
            except MetalbusError as error:
                outcome = error.code.value
                raise
            finally:
                self.latency.labels(subject=pattern).observe(self.clock() - started)
                self.requests.labels(subject=pattern, outcome=outcome).inc()

        return handle


class OutboxAndPoolCollector(Collector):
    """Reads the outbox's publish count and the asyncpg pool's sizes at every scrape."""

    def __init__(self, outbox: OutboxPublisher, database: Database) -> None:
        self.outbox = outbox
        self.database = database

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            PREFIX + "outbox_published_events", "Events this replica published to JetStream.", self.outbox.published
        )
        pool = self.database.pool
        if pool is not None:
            yield GaugeMetricFamily(PREFIX + "db_pool_connections", "Connections the pool holds.", pool.get_size())
            in_use = pool.get_size() - pool.get_idle_size()
            yield GaugeMetricFamily(PREFIX + "db_pool_in_use_connections", "Connections lent out now.", in_use)
            yield GaugeMetricFamily(PREFIX + "db_pool_max_connections", "Most the pool may hold.", pool.get_max_size())


async def count_backlog(database: Database) -> int:
    async with database.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NULL")
    return int(count)


async def sample_outbox_backlog(
    database: Database, gauge: Gauge, stop: asyncio.Event, interval_s: float = BACKLOG_SAMPLE_S
) -> None:
    """Every ``interval_s`` until ``stop``: set ``gauge`` to the unpublished events (kept as is while the
    database is away)."""
    await database.ready.wait()
    while not stop.is_set():
        try:
            gauge.set(await count_backlog(database))
        except BACKLOG_ERRORS as error:
            log.debug("metrics.backlog_unknown", error=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
