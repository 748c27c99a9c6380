"""Run rack-proxy (``python -m metalbus_rack_proxy``): presence, DNS, the syslog relay and the APT proxy.

Each part runs until ``stop``; a port of 0 turns DNS or the APT proxy off, an empty ``syslog_ports`` the relay.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from metalbus.bus import Bus
from metalbus.contracts.racks import RackServiceKind
from metalbus.logging import configure_logging
from metalbus.metrics_endpoint import FlatCountersCollector, metric_prefix, serving_metrics
from metalbus.rack_presence import keep_present
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_proxy.apt_proxy import AptProxy, AptProxyConfig
from metalbus_rack_proxy.dns_forwarder import Upstream
from metalbus_rack_proxy.dns_metrics import DnsCountersCollector
from metalbus_rack_proxy.dns_service import DnsConfig, RunningDns, running_dns
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_proxy.syslog_relay import SyslogRelay, SyslogRelayConfig, region_sender

METRICS_PREFIX = metric_prefix("rack_proxy")  # …syslog_*, …apt_*, …dns_*


def counters_collector(part: str, counters: object, documentation: str) -> FlatCountersCollector:
    """``counters`` of one part (``syslog``, ``apt``) as ``metalbus_rack_proxy_<part>_<field>_total``."""
    return FlatCountersCollector(METRICS_PREFIX + part, counters, documentation)


def syslog_relay(settings: RackProxySettings, bus: Bus) -> SyslogRelay:
    config = SyslogRelayConfig(
        host=settings.listen_address,
        ports=tuple(settings.syslog_ports),
        rate_per_source=settings.syslog_rate_per_source,
        burst_per_source=settings.syslog_burst_per_source,
        batch_max=settings.syslog_batch_max,
        batch_interval_s=settings.syslog_batch_interval_s,
        queue_max=settings.syslog_queue_max,
        request_timeout_s=settings.request_timeout_s,
    )
    return SyslogRelay(settings.rack_id, region_sender(bus, settings.request_timeout_s), config)


def apt_proxy(settings: RackProxySettings) -> AptProxy:
    config = AptProxyConfig(
        cache_dir=settings.apt_cache_dir,
        host=settings.listen_address,
        port=settings.apt_proxy_port,
        cache_max_bytes=settings.apt_cache_max_bytes,
        max_object_bytes=settings.apt_max_object_bytes,
        index_ttl_s=settings.apt_index_ttl_s,
        mirror_url=settings.apt_mirror_url,
        upstream_proxy=settings.apt_upstream_proxy,
        upstream_timeout_s=settings.apt_upstream_timeout_s,
    )
    return AptProxy(config)


@contextlib.asynccontextmanager
async def dns(settings: RackProxySettings, bus: Bus) -> AsyncIterator[RunningDns | None]:
    """Serve DNS while the block runs (nothing when ``dns_port`` is 0)."""
    if settings.dns_port == 0:
        yield None
        return
    config = DnsConfig(
        address=settings.listen_address,
        port=settings.dns_port,
        upstreams=tuple(Upstream.parse(text) for text in settings.dns_upstreams),
        domain=settings.dns_domain,
        zone_refresh_s=settings.dns_zone_refresh_s,
        forward_timeout_s=settings.dns_forward_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    async with running_dns(config, bus=bus, rack_id=settings.rack_id) as running:
        yield running


async def run_rack_proxy(settings: RackProxySettings, stop: asyncio.Event) -> None:
    """Stay present and serve DNS, syslog and APT until ``stop``; their counters on ``metrics_port``."""
    bus = await Bus.connect(settings.connect_options(f"{RackServiceKind.PROXY.value}:{settings.rack_id}"))
    registry = CollectorRegistry()
    parts: list[Coroutine[Any, Any, None]] = [keep_present(bus, RackServiceKind.PROXY, settings, stop)]
    if settings.syslog_ports:
        relay = syslog_relay(settings, bus)
        registry.register(counters_collector("syslog", relay.counters, "syslog relay"))
        parts.append(relay.run(stop))
    if settings.apt_proxy_port:
        apt = apt_proxy(settings)
        registry.register(counters_collector("apt", apt.counters, "APT proxy"))
        parts.append(apt.run(stop))
    try:
        async with dns(settings, bus) as running:
            if running is not None:
                registry.register(DnsCountersCollector(running.counters, running.feed, running.answerer))
            async with serving_metrics(registry, settings.metrics_address, settings.metrics_port):
                tasks = [asyncio.create_task(part) for part in parts]
                await asyncio.wait([*tasks, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
                stop.set()
                await asyncio.gather(*tasks)  # a part that failed to start raises here
    except OSError as error:
        raise SystemExit(f"metalbus-rack-proxy: cannot listen: {error}") from None
    finally:
        stop.set()
        await bus.drain()


def main() -> None:
    settings = load_settings(RackProxySettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_proxy(settings, stop))


if __name__ == "__main__":
    main()
