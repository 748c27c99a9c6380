"""The DNS counters as Prometheus text: what the resolver counted is what a scrape shows."""

import dns.message
from prometheus_client import CollectorRegistry, generate_latest

from metalbus.contracts.dns import DnsZone
from metalbus_rack_proxy.dns_answers import Answerer, zone_view
from metalbus_rack_proxy.dns_forwarder import Forwarder
from metalbus_rack_proxy.dns_metrics import DnsCountersCollector
from metalbus_rack_proxy.dns_server import DnsResolver


def test_a_scrape_shows_queries_replies_drops_latency_and_the_serial() -> None:
    answerer = Answerer("maas-internal")
    answerer.use_zone(zone_view(DnsZone(domain="maas-internal", serial=42)))
    resolver = DnsResolver(answerer, Forwarder(()))
    for query_id in range(3):
        wire = dns.message.make_query("nobody.maas-internal", "A", id=query_id).to_wire()
        resolver.counters.observe_latency(0.0002)
        assert resolver.answer_locally(wire, 512) is not None
    assert resolver.answer_locally(b"\x00\x01", 512) is None
    registry = CollectorRegistry()
    registry.register(DnsCountersCollector(resolver.counters, answerer=answerer))
    text = generate_latest(registry).decode()
    assert 'metalbus_rack_proxy_dns_queries_total{type="A"} 3.0' in text
    assert 'metalbus_rack_proxy_dns_queries_total{type="PTR"} 0.0' in text
    assert 'metalbus_rack_proxy_dns_replies_total{rcode="NXDOMAIN"} 3.0' in text
    assert 'metalbus_rack_proxy_dns_dropped_total{reason="shorter_than_a_header"} 1.0' in text
    assert 'metalbus_rack_proxy_dns_latency_seconds_bucket{le="0.0005"} 3.0' in text
    assert "metalbus_rack_proxy_dns_zone_serial 42.0" in text
