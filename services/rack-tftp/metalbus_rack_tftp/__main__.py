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
from metalbus.metrics_endpoint import FlatCountersCollector, metric_prefix, serving_metrics
from metalbus.rack_presence import keep_present
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_proxy.metadata_app import BusMetadataRegion, MetadataApp
from metalbus_rack_proxy.metadata_counters import MetadataProxyCounters
from metalbus_rack_tftp.boot_config_cache import BootConfigCache
from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.dynamic_files import DynamicBootFiles
from metalbus_rack_tftp.http_boot import HttpBootCounters, HttpBootServer, serve_http_boot
from metalbus_rack_tftp.region_boot_client import DEFAULT_HTTP_PORT, RegionBootConfigs
from metalbus_rack_tftp.settings import RackTftpSettings
from metalbus_rack_tftp.sources import FileSource, FirstThatServes
from metalbus_rack_tftp.tftp_server import TftpCounters, TftpServer, serve_tftp
from metalbus_rack_tftp.transfer_reports import TransferReportCounters, TransferReporter, region_sender

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


def metrics_registry(
    tftp: TftpCounters,
    http: HttpBootCounters,
    metadata: MetadataProxyCounters,
    reports: TransferReportCounters | None = None,
) -> CollectorRegistry:
    """The three servers' counters, read at scrape time: ``metalbus_rack_tftp_…`` (TFTP),
    ``metalbus_rack_tftp_http_boot_…``, ``metalbus_rack_tftp_metadata_…``, and the transfer reports to the
    region (``metalbus_rack_tftp_transfer_reports_…``)."""
    prefix = metric_prefix("rack_tftp")
    registry = CollectorRegistry()
    registry.register(FlatCountersCollector(prefix.rstrip("_"), tftp, "TFTP server"))
    registry.register(FlatCountersCollector(prefix + "http_boot", http, "HTTP boot server"))
    registry.register(FlatCountersCollector(prefix + "metadata", metadata, "metadata proxy"))
    if reports is not None:
        registry.register(FlatCountersCollector(prefix + "transfer_reports", reports, "boot transfer reports"))
    return registry


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
    reporter = TransferReporter(settings.rack_id, region_sender(bus, settings.region_timeout_s))
    reporting = asyncio.create_task(reporter.run(stop))
    tftp: TftpServer | None = None
    http: HttpBootServer | None = None
    try:
        events = await region.follow_machine_events(cache.on_machine_event)
        source = boot_files(settings, cache)
        try:
            tftp = await serve_tftp(
                settings.listen_address, settings.port, source, settings.tftp_settings(), reporter.observe
            )
            metadata = metadata_app(settings, bus)
            http = await serve_http_boot(
                settings.listen_address,
                settings.http_port,
                source,
                metadata_app=metadata,
                stall_timeout=settings.http_stall_timeout_s,
                on_transfer=reporter.observe,
            )
            registry = metrics_registry(tftp.counters, http.counters, metadata.counters, reporter.counters)
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
        await reporting
        await presence
        await bus.drain()


def main() -> None:
    settings = load_settings(RackTftpSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_tftp(settings, stop))


if __name__ == "__main__":
    main()
