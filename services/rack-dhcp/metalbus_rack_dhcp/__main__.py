"""Run rack-dhcp (``python -m metalbus_rack_dhcp``): presence beside one DHCP server per served interface."""

import asyncio

from metalbus.bus import Bus
from metalbus.contracts.racks import RackServiceKind
from metalbus.logging import configure_logging
from metalbus.metrics_endpoint import serving_metrics
from metalbus.rack_presence import keep_present
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource, snapshot_fetcher
from metalbus_rack_dhcp.metrics import RackDhcpMetrics
from metalbus_rack_dhcp.region_batches import BatchingLeaseSource
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, serve_interface
from metalbus_rack_dhcp.settings import RackDhcpSettings


async def run_rack_dhcp(
    settings: RackDhcpSettings, stop: asyncio.Event, counters: ServerCounters | None = None
) -> None:
    """Stay present and answer DHCP on ``settings.serve_interfaces`` until ``stop``; metrics on ``metrics_port``."""
    metrics = RackDhcpMetrics(counters if counters is not None else ServerCounters())
    bus = await Bus.connect(settings.connect_options(f"{RackServiceKind.DHCP.value}:{settings.rack_id}"))
    servers: list[DhcpProtocol] = []
    presence = asyncio.create_task(keep_present(bus, RackServiceKind.DHCP, settings, stop))
    region = RegionLeaseSource(bus, timeout_s=settings.lease_request_timeout_s, subnet_cache_s=settings.subnet_cache_s)
    batching = (
        BatchingLeaseSource(
            bus, region, max_batch=settings.lease_batch_max, max_in_flight=settings.lease_batches_in_flight
        )
        if settings.lease_batch_max > 0
        else None
    )
    fetch_snapshot = snapshot_fetcher(bus, settings.rack_id, settings.lease_request_timeout_s)
    leases = CachedLeaseSource(
        metrics.region.timed_source(batching or region), metrics.region.timed_fetcher(fetch_snapshot)
    )
    metrics.watch_cache(leases)
    cache = asyncio.create_task(leases.keep_fresh(stop, settings.snapshot_refresh_s))
    try:
        async with serving_metrics(metrics.registry, settings.metrics_address, settings.metrics_port):
            for interface in settings.serve_interfaces:
                servers.append(await _serve(interface, settings, leases, metrics.counters))
            await stop.wait()
    except OSError as error:
        raise SystemExit(f"metalbus-rack-dhcp: cannot serve metrics on port {settings.metrics_port}: {error}") from None
    finally:
        stop.set()
        for server in servers:
            await server.close()
        await presence
        await cache
        if batching is not None:
            await batching.close()
        await bus.drain()


async def _serve(
    interface: str, settings: RackDhcpSettings, leases: CachedLeaseSource, counters: ServerCounters
) -> DhcpProtocol:
    try:
        return await serve_interface(
            interface,
            settings.rack_id,
            leases,
            port=settings.port,
            counters=counters,
            max_in_flight=settings.max_in_flight,
            http_port=settings.http_port,
            max_wait_s=settings.request_max_wait_s,
        )
    except (OSError, TimeoutError) as error:
        raise SystemExit(f"metalbus-rack-dhcp: cannot serve DHCP on {interface}: {error}") from None


def main() -> None:
    settings = load_settings(RackDhcpSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_dhcp(settings, stop))


if __name__ == "__main__":
    main()
