"""rack-dhcp's Prometheus metrics: what the server and its lease cache counted, and how long the region takes.

One source of truth: the server counts in ``ServerCounters`` and the cache in ``CacheCounters`` (the in-process
view the tests and the service use); ``DhcpCountersCollector`` is a custom collector that reads them at scrape
time, so nothing is counted twice and nothing can drift. Only the region latency, which no in-process record keeps,
lives in prometheus_client instruments: ``RegionTiming`` wraps the region's lease source and snapshot fetcher.

Every known label value (message type, silence reason, drop reason) is exported from the start with 0, so a rate
over a series that has not moved yet is 0, not absent.
"""

import re
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    RackSnapshot,
    Subnet,
)
from metalbus_rack_dhcp.codec import DECODE_REASONS
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource, SnapshotFetcher
from metalbus_rack_dhcp.messages import MessageType
from metalbus_rack_dhcp.policy import LeaseSource, SilenceReason
from metalbus_rack_dhcp.server import DECODE_DROP_PREFIX, DROP_REASONS, ServerCounters

REGION_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MESSAGE_TYPES = tuple(kind.name for kind in MessageType)
SILENCE_REASONS = tuple(reason.value for reason in SilenceReason)
KNOWN_DROPS = (*sorted(DECODE_DROP_PREFIX + reason for reason in DECODE_REASONS), *DROP_REASONS)


def drop_label(counter_key: str) -> str:
    """A drop counter's key as a label value: ``decode: truncated header`` → ``decode_truncated_header``."""
    return re.sub(r"[^a-z0-9]+", "_", counter_key.lower()).strip("_")


def _counter_family(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _with_known(known: Sequence[str], seen: dict[str, int]) -> dict[str, int]:
    return {value: 0 for value in known} | dict(seen)


class DhcpCountersCollector(Collector):
    """Reads ``ServerCounters`` (and the lease cache's counters, when there is a cache) at every scrape."""

    def __init__(self, counters: ServerCounters, cache: CachedLeaseSource | None = None) -> None:
        self.counters = counters
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        counters = self.counters
        yield _counter_family(
            "metalbus_rack_dhcp_received",
            "DHCP requests decoded, by message type (UNKNOWN: no valid option 53).",
            "type",
            _with_known(MESSAGE_TYPES, counters.received),
        )
        yield _counter_family(
            "metalbus_rack_dhcp_replied",
            "DHCP replies sent, by message type.",
            "type",
            _with_known(MESSAGE_TYPES, counters.replied),
        )
        drops = _with_known(KNOWN_DROPS, counters.dropped)
        yield _counter_family(
            "metalbus_rack_dhcp_dropped",
            "Datagrams dropped unanswered, by reason (decode_*: the codec's reason; overloaded: max_in_flight).",
            "reason",
            {drop_label(key): count for key, count in drops.items()},
        )
        yield _counter_family(
            "metalbus_rack_dhcp_silent",
            "Requests decoded and deliberately not answered, by the policy's reason.",
            "reason",
            _with_known(SILENCE_REASONS, counters.silent),
        )
        yield CounterMetricFamily(
            "metalbus_rack_dhcp_neighbour_fallbacks",
            "Replies broadcast because the neighbour entry for a unicast to yiaddr could not be set.",
            value=counters.neighbour_fallbacks,
        )
        if self.cache is not None:
            yield from self._cache_metrics(self.cache)

    def _cache_metrics(self, cache: CachedLeaseSource) -> Iterator[Metric]:
        counts = cache.counters
        yield CounterMetricFamily(
            "metalbus_rack_dhcp_cache_local_renewals",
            "Renewals and re-requests ACKed from the rack's cache while the region was away.",
            value=counts.local_renewals,
        )
        yield CounterMetricFamily(
            "metalbus_rack_dhcp_cache_reconciled",
            "Local renewals told to the region once it answered again.",
            value=counts.reconciled,
        )
        yield CounterMetricFamily(
            "metalbus_rack_dhcp_cache_reconcile_refused",
            "Local renewals the region refused when reconciled (the binding was dropped from the cache).",
            value=counts.reconcile_refused,
        )
        yield CounterMetricFamily(
            "metalbus_rack_dhcp_cache_refreshes",
            "Snapshots of the rack's leases loaded from the region.",
            value=counts.refreshes,
        )
        yield GaugeMetricFamily(
            "metalbus_rack_dhcp_cache_pending_renewals",
            "Local renewals not yet reconciled with the region.",
            value=len(cache.pending),
        )


class RegionTiming:
    """The region latency histogram and error counter, and the wrappers that feed them."""

    def __init__(self, registry: CollectorRegistry, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.latency = Histogram(
            "metalbus_rack_dhcp_region_request_seconds",
            "Time the region took to answer a lease request (errors and timeouts included), by operation.",
            ["operation"],
            buckets=REGION_LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "metalbus_rack_dhcp_region_errors",
            "Region lease requests that failed, by operation and error code (unavailable, timeout, conflict, …).",
            ["operation", "code"],
            registry=registry,
        )
        self._latencies: dict[str, Histogram] = {}

    def timed_source(self, region: LeaseSource) -> "TimedLeaseSource":
        return TimedLeaseSource(region, self)

    def timed_fetcher(self, fetch: SnapshotFetcher) -> SnapshotFetcher:
        async def fetch_timed() -> RackSnapshot:
            with self.observing("snapshot"):
                return await fetch()

        return fetch_timed

    def observing(self, operation: str) -> "_Observation":
        return _Observation(self, operation)

    def latency_of(self, operation: str) -> Histogram:
        """The histogram's child for ``operation``, looked up once (``labels`` takes a lock and parses keywords)."""
        child = self._latencies.get(operation)
        if child is None:
            child = self._latencies[operation] = self.latency.labels(operation=operation)
        return child


class _Observation:
    """``with`` block timed into the histogram; a MetalbusError leaving it is also counted by its code."""

    def __init__(self, timing: RegionTiming, operation: str) -> None:
        self.timing = timing
        self.operation = operation
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = self.timing.clock()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        self.timing.latency_of(self.operation).observe(self.timing.clock() - self.started)
        if isinstance(error, MetalbusError):
            self.timing.errors.labels(operation=self.operation, code=error.code.value).inc()


class TimedLeaseSource:
    """A ``LeaseSource`` that times every region request (``subnets`` is the region client's own cache: untimed)."""

    def __init__(self, region: LeaseSource, timing: RegionTiming) -> None:
        self.region = region
        self.timing = timing

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        with self.timing.observing("offer"):
            return await self.region.offer(request)

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        with self.timing.observing("commit"):
            return await self.region.commit(request)

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        with self.timing.observing("renew"):
            return await self.region.renew(request)

    async def release(self, request: LeaseReleaseRequest) -> object:
        with self.timing.observing("release"):
            return await self.region.release(request)

    async def decline(self, request: LeaseReleaseRequest) -> object:
        with self.timing.observing("decline"):
            return await self.region.decline(request)

    async def subnets(self) -> Sequence[Subnet]:
        return await self.region.subnets()


class RackDhcpMetrics:
    """rack-dhcp's registry: the counters collector and the region timing, for ``serving_metrics``."""

    def __init__(self, counters: ServerCounters, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.registry = CollectorRegistry()
        self.counters = counters
        self.region = RegionTiming(self.registry, clock=clock)
        self._collector = DhcpCountersCollector(counters)
        self.registry.register(self._collector)

    def watch_cache(self, cache: CachedLeaseSource) -> None:
        """Export ``cache``'s counters too (the cache is built around the timed region, hence after the metrics)."""
        self._collector.cache = cache
