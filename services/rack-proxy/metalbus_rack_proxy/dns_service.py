"""rack-proxy's DNS, wired: the server, the answerer, the forwarder and the zone feed (region or fixed file).

``running_dns(config, bus=…, rack_id=…)`` is what rack-proxy's main runs; ``python -m metalbus_rack_proxy.dns_service
--zone-file zone.json --port 5353`` serves a fixed zone without NATS (benchmarks, trials).
"""

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from metalbus.bus import Bus
from metalbus.contracts.dns import DEFAULT_INTERNAL_DOMAIN, DnsZone
from metalbus.logging import configure_logging
from metalbus_rack_proxy.dns_answers import Answerer, zone_view
from metalbus_rack_proxy.dns_forwarder import Forwarder, Upstream
from metalbus_rack_proxy.dns_server import DnsCounters, DnsResolver, DnsServer
from metalbus_rack_proxy.dns_zone_feed import ZoneFeed, load_zone_file

log = structlog.get_logger("metalbus.rack_proxy.dns")


@dataclass(frozen=True)
class DnsConfig:
    address: str = "0.0.0.0"
    port: int = 53
    upstreams: tuple[Upstream, ...] = ()
    domain: str = DEFAULT_INTERNAL_DOMAIN
    zone_refresh_s: float = 5.0
    forward_timeout_s: float = 2.0
    request_timeout_s: float = 5.0


@dataclass
class RunningDns:
    server: DnsServer
    answerer: Answerer
    counters: DnsCounters
    feed: ZoneFeed | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port


@contextlib.asynccontextmanager
async def running_dns(
    config: DnsConfig, *, bus: Bus | None = None, rack_id: str = "", zone: DnsZone | None = None
) -> AsyncIterator[RunningDns]:
    """Serve DNS while the block runs: zone from the region over ``bus`` (refreshed), or the fixed ``zone``."""
    answerer = Answerer(config.domain)
    if zone is not None:
        answerer.use_zone(zone_view(zone))
    counters = DnsCounters()
    forwarder = Forwarder(config.upstreams, timeout_s=config.forward_timeout_s)
    server = DnsServer(DnsResolver(answerer, forwarder, counters))
    running = RunningDns(server=server, answerer=answerer, counters=counters)
    stop = asyncio.Event()
    if bus is not None:
        running.feed = ZoneFeed(
            bus,
            rack_id,
            answerer,
            refresh_interval_s=config.zone_refresh_s,
            request_timeout_s=config.request_timeout_s,
        )
        running.tasks.append(asyncio.create_task(running.feed.run(stop), name="dns-zone-feed"))
    try:
        await server.start(config.address, config.port)
        yield running
    finally:
        stop.set()
        for task in running.tasks:
            task.cancel()
        await asyncio.gather(*running.tasks, return_exceptions=True)
        await server.close()


async def serve_fixed_zone(config: DnsConfig, zone: DnsZone) -> None:
    """Serve until SIGINT/SIGTERM; prints the bound port on stdout once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_dns(config, zone=zone) as dns:
        print(f"listening {dns.port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="rack-proxy DNS serving a fixed zone (no NATS, no region)")
    parser.add_argument("--zone-file", type=Path, required=True, help="a DnsZone as JSON")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5353)
    parser.add_argument("--upstream", action="append", default=[], help="host[:port], repeatable")
    parser.add_argument("--log-level", default="info")
    arguments = parser.parse_args()
    configure_logging(arguments.log_level)
    config = DnsConfig(
        address=arguments.address,
        port=arguments.port,
        upstreams=tuple(Upstream.parse(text) for text in arguments.upstream),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_fixed_zone(config, load_zone_file(arguments.zone_file)))


if __name__ == "__main__":
    main()
