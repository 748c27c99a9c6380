"""Run rack-tftp (``python -m metalbus_rack_tftp``): presence, TFTP and HTTP boot serving one chain of files.

Both servers ask the same sources: per-machine boot configs rendered from the region's answer (cached per MAC,
dropped on machine events), then the static boot root that ``scripts/boot-files.sh`` fills. The HTTP server also
carries the machines' metadata under ``/MAAS`` (rack-proxy's metadata app), as a MAAS rack's port 5248 does.
"""

import asyncio

import structlog
from prometheus_client import CollectorRegistry

from metalbus.bus import Bus
from metalbus.contracts.racks import RackServiceKind
from metalbus.logging import configure_logging
from metalbus.metrics_endpoint import FlatCountersCollector, serving_metrics
from metalbus.rack_presence import keep_present
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_proxy.metadata_app import BusMetadataRegion, MetadataApp
from metalbus_rack_tftp.boot_config_cache import BootConfigCache
from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.dynamic_files import DynamicBootFiles
from metalbus_rack_tftp.http_boot import HttpBootServer, serve_http_boot
from metalbus_rack_tftp.region_boot_client import DEFAULT_HTTP_PORT, RegionBootConfigs
from metalbus_rack_tftp.settings import RackTftpSettings
from metalbus_rack_tftp.sources import FileSource, FirstThatServes
from metalbus_rack_tftp.tftp_server import TftpServer, serve_tftp

log = structlog.get_logger("metalbus.rack_tftp")


def boot_files(settings: RackTftpSettings, cache: BootConfigCache) -> FileSource:
    """Rendered per-machine configs first, then the static boot root."""
    rendered = DynamicBootFiles(
        cache,
        http_port=settings.http_port,
        kernels_over_http=settings.kernels_over_http,
        rack_address=settings.rack_address,
    )
    return FirstThatServes([rendered, StaticBootRoot(settings.boot_root)])


def metadata_app(settings: RackTftpSettings, bus: Bus) -> MetadataApp:
    """The machines' metadata under ``/MAAS`` on this server (rack-proxy's app: one HTTP server per rack)."""
    region = BusMetadataRegion(
        bus, read_timeout_s=settings.metadata_read_timeout_s, signal_timeout_s=settings.metadata_signal_timeout_s
    )
    return MetadataApp(region, max_upload_bytes=settings.metadata_max_upload_bytes)


async def run_rack_tftp(settings: RackTftpSettings, stop: asyncio.Event) -> None:
    """Stay present and serve TFTP and HTTP boot until ``stop``."""
    if not settings.boot_root.is_dir():
        log.warning("rack_tftp.empty_boot_root", boot_root=str(settings.boot_root), fill_with="scripts/boot-files.sh")
        settings.boot_root.mkdir(parents=True, exist_ok=True)
    bus = await Bus.connect(settings.connect_options(f"{RackServiceKind.TFTP.value}:{settings.rack_id}"))
    region = RegionBootConfigs(
        bus,
        rack_id=settings.rack_id,
        timeout_s=settings.region_timeout_s,
        http_port=settings.http_port or DEFAULT_HTTP_PORT,
        syslog_port=settings.syslog_port or None,
    )
    cache = BootConfigCache(
        region.boot_config, ttl_s=settings.boot_config_ttl_s, stale_if_error_s=settings.boot_config_stale_s
    )
    presence = asyncio.create_task(keep_present(bus, RackServiceKind.TFTP, settings, stop))
    tftp: TftpServer | None = None
    http: HttpBootServer | None = None
    try:
        events = await region.follow_machine_events(cache.on_machine_event)
        source = boot_files(settings, cache)
        try:
            tftp = await serve_tftp(settings.listen_address, settings.port, source, settings.tftp_settings())
            metadata = metadata_app(settings, bus)
            http = await serve_http_boot(
                settings.listen_address,
                settings.http_port,
                source,
                metadata_app=metadata,
                stall_timeout=settings.http_stall_timeout_s,
            )
            registry = CollectorRegistry()
            registry.register(FlatCountersCollector("metalbus_tftp", tftp.counters, "TFTP server"))
            registry.register(FlatCountersCollector("metalbus_http_boot", http.counters, "HTTP boot server"))
            registry.register(FlatCountersCollector("metalbus_metadata", metadata.counters, "metadata proxy"))
            async with serving_metrics(registry, settings.metrics_address, settings.metrics_port):
                log.info("rack_tftp.serving", tftp_port=tftp.port, http_port=http.port, boot=str(settings.boot_root))
                await stop.wait()
        except OSError as error:
            raise SystemExit(f"metalbus-rack-tftp: cannot listen on {settings.listen_address}: {error}") from None
        await events.unsubscribe()
    finally:
        stop.set()
        if tftp is not None:
            tftp.close()
        if http is not None:
            await http.close()
        await cache.close()
        await presence
        await bus.drain()


def main() -> None:
    settings = load_settings(RackTftpSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_tftp(settings, stop))


if __name__ == "__main__":
    main()
