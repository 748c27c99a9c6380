"""What the metadata proxy did since it started: requests by route and status, region failures, latency."""

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds (seconds) of the latency buckets, as Prometheus histograms count them; the last one is +Inf.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Counts of request durations per bucket (``counts[i]`` for ``<= LATENCY_BUCKETS_S[i]``, the last for more)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total += 1
        self.sum_s += seconds

    def quantile_upper_bound(self, quantile: float) -> float:
        """The bucket bound under which ``quantile`` of the requests finished (inf if in the last bucket)."""
        if self.total == 0:
            return 0.0
        wanted, seen = quantile * self.total, 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return LATENCY_BUCKETS_S[index] if index < len(LATENCY_BUCKETS_S) else float("inf")
        return float("inf")


@dataclass
class MetadataProxyCounters:
    """Exported as metrics by rack-proxy; the route is the URL pattern (``meta-data/{item}``), never the URL."""

    requests_by_route: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[int] = field(default_factory=Counter)
    region_failures_by_code: Counter[str] = field(default_factory=Counter)
    unauthenticated: int = 0
    """Answered 401 (no credentials, unreadable ones, or the region did not know them)."""
    uploads_refused: int = 0
    """Answered 413: the body was larger than the upload limit."""
    signals_forwarded: int = 0
    cloud_init_events: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
