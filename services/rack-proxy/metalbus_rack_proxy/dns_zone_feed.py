"""Keeps rack-proxy's DNS zone current: asks the region every few seconds and whenever a rack, lease or machine event
arrives on NATS; while the region is away the last zone keeps being served. Or: a fixed zone from a JSON file."""

import asyncio
import contextlib
from pathlib import Path

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from metalbus.bus import Bus
from metalbus.contracts.dns import DnsZone, DnsZoneQuery
from metalbus.contracts.errors import MetalbusError
from metalbus.subjects import DNS_ZONE, EVENT_LEASE, EVENT_MACHINE, EVENT_RACK_SERVICE, wildcard
from metalbus_rack_proxy.dns_answers import Answerer, zone_view

log = structlog.get_logger("metalbus.rack_proxy.dns")

EVENT_DEBOUNCE_S = 0.05  # a burst of events (a batch of leases) costs one zone request
EVENT_REFRESH_GAP_S = 1.0
"""Event-driven refreshes start at least this far apart: in a boot storm lease events never stop, and each refresh
carries the whole zone (a thousand hosts), so refreshing on every burst cost the region and this service more than
DNS was worth (bench/fleet.py); a new name still resolves within about a second."""
ZONE_EVENTS = (EVENT_RACK_SERVICE, EVENT_LEASE, EVENT_MACHINE)


def load_zone_file(path: Path) -> DnsZone:
    """A fixed zone (the DnsZone JSON the region would send): for region-less runs and benchmarks."""
    return DnsZone.model_validate_json(path.read_bytes())


class ZoneFeed:
    def __init__(
        self,
        bus: Bus,
        rack_id: str,
        answerer: Answerer,
        *,
        refresh_interval_s: float = 5.0,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.bus = bus
        self.rack_id = rack_id
        self.answerer = answerer
        self.refresh_interval_s = refresh_interval_s
        self.request_timeout_s = request_timeout_s
        self.refreshes = 0
        self.refresh_failures = 0
        self._wanted = asyncio.Event()
        self._failing_since_success = 0  # warn once per outage, not at every refresh
        self._last_refresh_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``; every NATS subscription is removed on the way out."""
        subscriptions = await self._subscribe()
        try:
            while not stop.is_set():
                self._wanted.clear()
                await self.refresh()
                await self._wait_for_reason(stop)
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(nats.errors.Error):  # the connection may already be closed
                    await subscription.unsubscribe()

    async def refresh(self) -> bool:
        """Ask the region for the zone once; on failure keep answering from the last one."""
        self._last_refresh_at = asyncio.get_running_loop().time()
        try:
            zone = await self.bus.request(DNS_ZONE, DnsZoneQuery(rack_id=self.rack_id), timeout=self.request_timeout_s)
        except MetalbusError as error:
            self.refresh_failures += 1
            report = log.warning if self._failing_since_success == 0 else log.debug
            report("dns.zone_refresh_failed", error=error.message, serving_serial=self._serial())
            self._failing_since_success += 1
            return False
        if self._failing_since_success:
            log.info("dns.zone_refresh_recovered", failed_refreshes=self._failing_since_success)
            self._failing_since_success = 0
        self.answerer.use_zone(zone_view(zone))
        log.debug("dns.zone_loaded", serial=zone.serial, subnets=len(zone.subnets), hosts=len(zone.hosts))
        self.refreshes += 1
        return True

    def _serial(self) -> int | None:
        return None if self.answerer.zone is None else self.answerer.zone.serial

    async def _subscribe(self) -> list[Subscription]:
        async def on_event(_: Msg) -> None:
            self._wanted.set()

        return [await self.bus.client.subscribe(wildcard(event.pattern), cb=on_event) for event in ZONE_EVENTS]

    async def _wait_for_reason(self, stop: asyncio.Event) -> None:
        """Until the interval passes, an event arrives, or ``stop``."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wanted.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.refresh_interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._wanted.is_set() and not stop.is_set():
            since_last = asyncio.get_running_loop().time() - self._last_refresh_at
            with contextlib.suppress(TimeoutError):  # ``stop`` ends the wait at once
                await asyncio.wait_for(stop.wait(), max(EVENT_DEBOUNCE_S, EVENT_REFRESH_GAP_S - since_last))
