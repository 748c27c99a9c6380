"""The region as rack-tftp's source of boot decisions: BOOT_CONFIG requests and machine events, over the bus.

The only place rack-tftp's boot configs talk to NATS. Every request carries an explicit timeout; any typed error
of the region or the bus (Unavailable, Timeout, a missing boot resource, a machine without credentials, …) is a
``FileRefused``: no answer at all (the bus's Unavailable or Timeout, or the region's own Unavailable: its database is
away) is REGION_SILENT, so a TFTP loader hears nothing and asks again; any other error is UNAVAILABLE, and the
loader gets TFTP error 0 / HTTP 503 with the region's words and goes on to its next config name. Machine events
are followed on plain NATS (the region publishes them into JetStream, whose
subjects core subscribers see too), so a rack needs no durable consumer and replays nothing it missed: what it
missed while disconnected is bounded by the cache's TTL.
"""

from collections.abc import Callable
from ipaddress import IPv4Address

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from metalbus.bus import Bus
from metalbus.contracts.boot import RACK_HTTP_PORT, RACK_SYSLOG_PORT, BootConfig, BootConfigQuery
from metalbus.contracts.common import Architecture
from metalbus.contracts.errors import ErrorCode, MetalbusError, Unavailable
from metalbus.contracts.machines import MachineEvent
from metalbus.subjects import BOOT_CONFIG, EVENT_MACHINE, wildcard
from metalbus_rack_tftp.sources import FileRefused, RefusalReason

log = structlog.get_logger("metalbus.rack_tftp.region")

DEFAULT_TIMEOUT_S = 2.0
"""Loaders retry a config request after a few seconds (pxelinux, iPXE): answer well before that."""


DEFAULT_HTTP_PORT = RACK_HTTP_PORT


class RegionBootConfigs:
    """Asks the region what a MAC boots; follows machine status changes."""

    def __init__(
        self,
        bus: Bus,
        *,
        rack_id: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        http_port: int = DEFAULT_HTTP_PORT,
        syslog_port: int | None = RACK_SYSLOG_PORT,
    ) -> None:
        self.bus = bus
        self.rack_id = rack_id
        self.timeout_s = timeout_s
        self.http_port = http_port
        self.syslog_port = syslog_port

    async def boot_config(self, mac: str, architecture: Architecture, rack_address: IPv4Address) -> BootConfig:
        query = BootConfigQuery(
            mac=mac,
            architecture=architecture,
            rack_id=self.rack_id,
            rack_address=rack_address,
            rack_http_port=self.http_port,
            rack_syslog_port=self.syslog_port,
        )
        try:
            return await self.bus.request(BOOT_CONFIG, query, timeout=self.timeout_s)
        except MetalbusError as error:
            log.info("boot_config.refused", mac=mac, architecture=architecture.value, code=error.code.value)
            silent = error.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)
            reason = RefusalReason.REGION_SILENT if silent else RefusalReason.UNAVAILABLE
            raise FileRefused(reason, f"no boot decision for {mac} from the region: {error.message}") from error

    async def follow_machine_events(self, on_event: Callable[[MachineEvent], None]) -> Subscription:
        """Call ``on_event`` for every machine event from now on (until the subscription is unsubscribed)."""

        async def receive(msg: Msg) -> None:
            try:
                event = MachineEvent.from_json_bytes(msg.data)
            except ValidationError as error:
                log.debug("machine_event.unreadable", subject=msg.subject, error=str(error))
                return
            on_event(event)

        try:
            subscription = await self.bus.client.subscribe(wildcard(EVENT_MACHINE.pattern), cb=receive)
            await self.bus.client.flush(timeout=self.timeout_s)  # type: ignore[arg-type]  # floats work
        except (nats.errors.Error, TimeoutError) as error:
            raise Unavailable(f"cannot follow machine events: {error!r}") from error
        return subscription
