"""How a rack service makes itself known: announce after connecting, heartbeat, re-announce when asked.

Every rack service (dhcp, tftp, power, proxy) runs this beside its own work; the region records it and
reports rack health from the heartbeats.
"""

import asyncio
import contextlib
import socket
from ipaddress import IPv4Interface

import structlog
from pydantic import Field

from metalbus import __version__, host_interfaces
from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.racks import (
    RACK_ID_PATTERN,
    RackServiceAnnouncement,
    RackServiceHeartbeat,
    RackServiceKind,
)
from metalbus.settings import ServiceSettings
from metalbus.subjects import RACK_ANNOUNCE, RACK_HEARTBEAT

log = structlog.get_logger("metalbus.rack")


class RackServiceSettings(ServiceSettings):
    """What every rack service needs: which rack it belongs to and how often it heartbeats."""

    rack_id: str = Field(default="rack-1", pattern=RACK_ID_PATTERN)
    hostname: str = Field(default_factory=socket.gethostname, min_length=1)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    interfaces: list[IPv4Interface] | None = Field(
        default=None, description="The networks this rack reaches; default: detected from the host."
    )
    shared_secret: str | None = Field(default=None, json_schema_extra={"secret": True})
    request_timeout_s: float = Field(default=5.0, gt=0)
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="TCP port of GET /metrics (Prometheus text); 0: no metrics endpoint."
    )
    metrics_address: str = Field(
        default="127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0: every interface)."
    )


async def keep_present(
    bus: Bus,
    kind: RackServiceKind,
    settings: RackServiceSettings,
    stop: asyncio.Event,
) -> None:
    """Announce, then heartbeat every interval until ``stop``; any failure means announce again."""
    announcement = RackServiceAnnouncement(
        rack_id=settings.rack_id,
        service=kind,
        hostname=settings.hostname,
        version=__version__,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        interfaces=host_interfaces.detect() if settings.interfaces is None else settings.interfaces,
        shared_secret=settings.shared_secret,
    )
    heartbeat = RackServiceHeartbeat(rack_id=settings.rack_id, service=kind)  # the identity comes with the ack
    announced = False
    while not stop.is_set():
        try:
            if not announced:
                ack = await bus.request(RACK_ANNOUNCE, announcement, timeout=settings.request_timeout_s)
                heartbeat = RackServiceHeartbeat(
                    rack_id=settings.rack_id, service=kind, service_token=ack.service_token
                )
                announced = True
                log.info("rack.announced", rack_id=settings.rack_id, service=kind.value)
            else:
                ack = await bus.request(RACK_HEARTBEAT, heartbeat, timeout=settings.request_timeout_s)
                announced = ack.known
                if not announced:
                    continue
        except MetalbusError as error:
            announced = False
            log.warning("rack.region_unreachable", service=kind.value, error=error.message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_interval_s)


async def run_rack_service(kind: RackServiceKind, settings: RackServiceSettings, stop: asyncio.Event) -> None:
    """Connect to the bus and stay present until ``stop``; the service's own protocol work comes later."""
    bus = await Bus.connect(settings.connect_options(f"{kind.value}:{settings.rack_id}"))
    try:
        await keep_present(bus, kind, settings, stop)
    finally:
        await bus.drain()
