"""Every metric of every service is named ``metalbus_<service>_…``: each service's registry, built as the service
builds it, is collected here and any name without its service's prefix (a future stray one too) fails the test."""

from collections.abc import Iterator

import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from metalbus.bus import Bus
from metalbus.contracts.dns import DnsZone
from metalbus.contracts.leases import LeaseCommitRequest, LeaseOfferRequest, LeaseReleaseRequest, RackSnapshot
from metalbus.metrics_endpoint import SERVICES, metric_prefix
from metalbus_api.metrics import ApiMetrics
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource
from metalbus_rack_dhcp.metrics import RackDhcpMetrics
from metalbus_rack_dhcp.server import ServerCounters
from metalbus_rack_power.metrics import RackPowerMetrics
from metalbus_rack_proxy.__main__ import counters_collector
from metalbus_rack_proxy.apt_proxy import AptProxyCounters
from metalbus_rack_proxy.dns_answers import Answerer, zone_view
from metalbus_rack_proxy.dns_metrics import DnsCountersCollector
from metalbus_rack_proxy.dns_server import DnsCounters
from metalbus_rack_proxy.dns_zone_feed import ZoneFeed
from metalbus_rack_proxy.metadata_counters import MetadataProxyCounters
from metalbus_rack_proxy.syslog_relay import SyslogRelayCounters
from metalbus_rack_tftp.__main__ import metrics_registry
from metalbus_rack_tftp.http_boot import HttpBootCounters
from metalbus_rack_tftp.tftp_server import TftpCounters
from metalbus_region.database import Database
from metalbus_region.metrics import RegionMetrics
from metalbus_region.outbox import OutboxPublisher


def unconnected_bus() -> Bus:
    return Bus(NatsClient())


class NoRegion:
    """A lease source that is never asked (the cache is only built, to have its counters exported)."""

    async def offer(self, request: LeaseOfferRequest) -> object:
        raise AssertionError("not asked")

    async def commit(self, request: LeaseCommitRequest) -> object:
        raise AssertionError("not asked")

    renew = commit

    async def release(self, request: LeaseReleaseRequest) -> object:
        raise AssertionError("not asked")

    decline = release

    async def subnets(self) -> list[object]:
        return []


async def no_snapshot() -> RackSnapshot:
    raise AssertionError("not asked")


def region_registry() -> CollectorRegistry:
    metrics = RegionMetrics()
    database = Database("postgresql://nobody@127.0.0.1:1/none", pool_max=1, timeout_s=1)
    metrics.watch(OutboxPublisher(database, unconnected_bus()), database)
    return metrics.registry


def rack_dhcp_registry() -> CollectorRegistry:
    metrics = RackDhcpMetrics(ServerCounters())
    metrics.watch_cache(CachedLeaseSource(NoRegion(), no_snapshot))  # type: ignore[arg-type]
    return metrics.registry


def rack_proxy_registry() -> CollectorRegistry:
    answerer = Answerer("maas-internal")
    answerer.use_zone(zone_view(DnsZone(domain="maas-internal", serial=1)))
    registry = CollectorRegistry()
    registry.register(counters_collector("syslog", SyslogRelayCounters(), "syslog relay"))
    registry.register(counters_collector("apt", AptProxyCounters(), "APT proxy"))
    feed = ZoneFeed(unconnected_bus(), "rack-1", answerer)
    registry.register(DnsCountersCollector(DnsCounters(), feed, answerer))
    return registry


REGISTRIES = {
    "region": region_registry,
    "api": lambda: ApiMetrics().registry,
    "rack_dhcp": rack_dhcp_registry,
    "rack_tftp": lambda: metrics_registry(TftpCounters(), HttpBootCounters(), MetadataProxyCounters()),
    "rack_power": lambda: RackPowerMetrics().registry,
    "rack_proxy": rack_proxy_registry,
}


def names_of(families: Iterator[Metric]) -> set[str]:
    names: set[str] = set()
    for family in families:
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_service_has_a_registry_checked_here() -> None:
    assert set(REGISTRIES) == set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_every_metric_name_starts_with_its_services_prefix(service: str) -> None:
    names = names_of(REGISTRIES[service]().collect())
    assert len(names) >= 3, names  # the registry really holds the service's metrics
    strays = sorted(name for name in names if not name.startswith(metric_prefix(service)))
    assert strays == []


def test_an_unknown_service_has_no_prefix() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        metric_prefix("rack_dns")
