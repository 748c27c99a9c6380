"""rack-proxy DNS's Prometheus metrics, read from ``DnsCounters`` (and the zone feed) at every scrape, so nothing is
counted twice: queries by type, replies by rcode, forwards, drops by reason, latency, zone refreshes and serial.
Register ``DnsCountersCollector(dns.counters, dns.feed, dns.answerer)`` on the service's registry."""

import re
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from metalbus_rack_proxy.dns_answers import Answerer
from metalbus_rack_proxy.dns_codec import Rcode, RecordType
from metalbus_rack_proxy.dns_server import LATENCY_BUCKETS_S, DnsCounters
from metalbus_rack_proxy.dns_zone_feed import ZoneFeed


def label(text: str) -> str:
    """``a response, not a query`` → ``a_response_not_a_query``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def query_type_name(qtype: int) -> str:
    return RecordType(qtype).name if qtype in RecordType._value2member_map_ else f"TYPE{qtype}"


def _labelled(name: str, documentation: str, label_name: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label_name])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class DnsCountersCollector(Collector):
    def __init__(self, counters: DnsCounters, feed: ZoneFeed | None = None, answerer: Answerer | None = None) -> None:
        self.counters = counters
        self.feed = feed
        self.answerer = answerer

    def collect(self) -> Iterator[Metric]:
        counters = self.counters
        by_type = {kind.name: 0 for kind in RecordType}
        for qtype, count in counters.queries_by_type.items():
            by_type[query_type_name(qtype)] = by_type.get(query_type_name(qtype), 0) + count
        yield _labelled("metalbus_rack_proxy_dns_queries", "DNS queries read, by query type.", "type", by_type)
        rcodes = {rcode.name: 0 for rcode in Rcode} | dict(counters.replies_by_rcode)
        yield _labelled("metalbus_rack_proxy_dns_replies", "DNS replies sent, by rcode.", "rcode", rcodes)
        dropped = {label(reason): count for reason, count in counters.dropped.items()}
        yield _labelled("metalbus_rack_proxy_dns_dropped", "Datagrams/messages dropped, by reason.", "reason", dropped)
        yield CounterMetricFamily(
            "metalbus_rack_proxy_dns_forwarded", "Queries forwarded upstream.", value=counters.forwarded
        )
        yield CounterMetricFamily(
            "metalbus_rack_proxy_dns_forward_failures",
            "Forwards no upstream answered.",
            value=counters.forward_failures,
        )
        yield self._latency()
        yield from self._zone()

    def _latency(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), self.counters.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return HistogramMetricFamily(
            "metalbus_rack_proxy_dns_latency_seconds",
            "From a query read to its reply sent (forwarded queries included).",
            buckets=buckets,
            sum_value=self.counters.latency_sum_s,
        )

    def _zone(self) -> Iterator[Metric]:
        if self.feed is not None:
            yield CounterMetricFamily(
                "metalbus_rack_proxy_dns_zone_refreshes", "Zones received.", value=self.feed.refreshes
            )
            yield CounterMetricFamily(
                "metalbus_rack_proxy_dns_zone_refresh_failures",
                "Zone requests the region did not answer (the last zone kept being served).",
                value=self.feed.refresh_failures,
            )
        zone = self.answerer.zone if self.answerer is not None else None
        if zone is not None:
            yield GaugeMetricFamily(
                "metalbus_rack_proxy_dns_zone_serial", "Serial of the zone being served.", value=zone.serial
            )
