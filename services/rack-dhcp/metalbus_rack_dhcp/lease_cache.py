"""The rack's memory of its leases: a ``policy.LeaseSource`` that keeps renewals answered while the region is away.

``CachedLeaseSource`` wraps the region's source. It is filled from the region's ``RACK_SNAPSHOT`` at start and on
every ``refresh`` (the service calls ``keep_fresh``), and every successful offer, commit and renewal updates it.
When the region (or NATS) is unavailable or times out, a renewal or re-request (INIT-REBOOT, RENEWING,
REBINDING) of a lease the cache holds bound for that MAC and address is ACKed locally, extended by the subnet's
lease time, and remembered; a DISCOVER stays silent (the region alone guarantees an address is held once: the
rack never invents one). Once the region answers again, ``reconcile`` sends the remembered renewals to it
(LEASE_RENEW, or LEASE_COMMIT when the region no longer knows the binding).

The decisions (``local_renewal``, ``merged_leases``) are pure functions of the cache and an injected clock.
A request answered from the cache is marked in its task's context: ``answered_from_cache()`` tells the server which
source to name in its lease log line.
"""

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import structlog

from metalbus.bus import Bus
from metalbus.contracts.errors import Conflict, MetalbusError, NotFound, Timeout, Unavailable
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    RackSnapshot,
    RackSnapshotQuery,
    Subnet,
)
from metalbus.subjects import RACK_SNAPSHOT
from metalbus_rack_dhcp.policy import LeaseSource

log = structlog.get_logger("metalbus.rack_dhcp.cache")

DEFAULT_REFRESH_S = 30.0
Clock = Callable[[], datetime]
SnapshotFetcher = Callable[[], Awaitable[RackSnapshot]]
LeaseKey = tuple[str, IPv4Address]

_ANSWERED_FROM_CACHE: contextvars.ContextVar[bool] = contextvars.ContextVar("answered_from_cache", default=False)


def answered_from_cache() -> bool:
    """True in a task (one DHCP request) whose commit or renewal the cache answered without the region."""
    return _ANSWERED_FROM_CACHE.get()


def wall_clock() -> datetime:
    return datetime.now(UTC)


def snapshot_fetcher(bus: Bus, rack_id: str, timeout_s: float) -> SnapshotFetcher:
    """Asks the region for ``rack_id``'s snapshot (subnets, current leases, reserved addresses)."""

    async def fetch() -> RackSnapshot:
        return await bus.request(RACK_SNAPSHOT, RackSnapshotQuery(rack_id=rack_id), timeout=timeout_s)

    return fetch


def key_of(mac: str, ip: IPv4Address) -> LeaseKey:
    return (mac.lower(), ip)


def local_renewal(
    lease: Lease | None, subnet: Subnet | None, request: LeaseCommitRequest, now: datetime
) -> Lease | None:
    """The lease extended by the rack alone, or None when the cache cannot vouch for it: only a current bound
    lease of exactly this MAC and address, in a known subnet, is renewed."""
    if lease is None or subnet is None or lease.subnet_id != subnet.subnet_id:
        return None
    if lease.state is not LeaseState.BOUND or lease.expires_at <= now:
        return None
    if key_of(lease.mac, lease.ip) != key_of(request.mac, request.ip):
        return None
    return lease.model_copy(
        update={
            "expires_at": now + timedelta(seconds=subnet.lease_time_s),
            "rack_id": request.rack_id,
            "hostname": request.hostname or lease.hostname,
        }
    )


def merged_leases(snapshot: Iterable[Lease], local: dict[LeaseKey, Lease]) -> dict[LeaseKey, Lease]:
    """The snapshot's leases, where a local renewal not yet reconciled wins if it reaches further."""
    merged = {key_of(lease.mac, lease.ip): lease for lease in snapshot}
    for key, lease in local.items():
        known = merged.get(key)
        if known is None or known.expires_at < lease.expires_at:
            merged[key] = lease
    return merged


@dataclass
class CacheCounters:
    local_renewals: int = 0
    reconciled: int = 0
    reconcile_refused: int = 0
    refreshes: int = 0


class CachedLeaseSource:
    """``LeaseSource`` that asks ``region`` first and answers renewals from its cache when the region is away."""

    def __init__(self, region: LeaseSource, fetch_snapshot: SnapshotFetcher, *, clock: Clock = wall_clock) -> None:
        self.region = region
        self.fetch_snapshot = fetch_snapshot
        self.clock = clock
        self.counters = CacheCounters()
        self._subnets: dict[int, Subnet] = {}
        self._leases: dict[LeaseKey, Lease] = {}
        self._pending: dict[LeaseKey, LeaseCommitRequest] = {}
        """Renewals ACKed locally, not yet told to the region."""
        self._local: dict[LeaseKey, Lease] = {}

    # -- LeaseSource --------------------------------------------------------------------------------------

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        offer = await self.region.offer(request)
        self._subnets[offer.subnet.subnet_id] = offer.subnet
        self._remember(offer.lease)
        return offer

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        try:
            lease = await self.region.commit(request)
        except (Unavailable, Timeout):
            return self._renew_locally(request)
        self._remember(lease)
        return lease

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        try:
            lease = await self.region.renew(request)
        except (Unavailable, Timeout):
            return self._renew_locally(request)
        self._remember(lease)
        return lease

    async def release(self, request: LeaseReleaseRequest) -> object:
        reply = await self.region.release(request)
        self._forget(key_of(request.mac, request.ip))
        return reply

    async def decline(self, request: LeaseReleaseRequest) -> object:
        reply = await self.region.decline(request)
        self._forget(key_of(request.mac, request.ip))
        return reply

    async def subnets(self) -> Sequence[Subnet]:
        try:
            subnets = await self.region.subnets()
        except (Unavailable, Timeout):
            if not self._subnets:
                raise
            return list(self._subnets.values())
        self._subnets.update({subnet.subnet_id: subnet for subnet in subnets})
        return subnets

    # -- keeping the cache ----------------------------------------------------------------------------------

    @property
    def pending(self) -> list[LeaseCommitRequest]:
        return list(self._pending.values())

    def lease(self, mac: str, ip: IPv4Address) -> Lease | None:
        return self._leases.get(key_of(mac, ip))

    async def refresh(self) -> None:
        """Reconcile the local renewals, then reload the snapshot; Unavailable/Timeout when the region is away.

        The snapshot replaces what the cache knows of the subnets it covers (those the region sees the rack
        on); what region answers taught about other subnets (a relay's, before the rack is announced) stays."""
        await self.reconcile()
        snapshot = await self.fetch_snapshot()
        covered = {subnet.subnet_id for subnet in snapshot.subnets}
        learned = {key: lease for key, lease in self._leases.items() if lease.subnet_id not in covered}
        self._subnets = {
            subnet_id: subnet for subnet_id, subnet in self._subnets.items() if subnet_id not in covered
        } | {subnet.subnet_id: subnet for subnet in snapshot.subnets}
        self._leases = learned | merged_leases(snapshot.leases, {key: self._local[key] for key in self._pending})
        self.counters.refreshes += 1

    async def reconcile(self) -> None:
        """Tell the region every renewal ACKed without it; stops (keeping the rest) if it is still away."""
        for key, request in list(self._pending.items()):
            try:
                lease = await self._tell_region(request)
            except (Unavailable, Timeout):
                raise
            except MetalbusError as error:
                self.counters.reconcile_refused += 1
                log.warning("dhcp.cache.reconcile_refused", mac=request.mac, ip=str(request.ip), error=error.message)
                self._pending.pop(key, None)
                self._local.pop(key, None)
                self._leases.pop(key, None)
                continue
            self._pending.pop(key, None)
            self._local.pop(key, None)
            self._remember(lease)
            self.counters.reconciled += 1

    async def _tell_region(self, request: LeaseCommitRequest) -> Lease:
        try:
            return await self.region.renew(request)
        except NotFound:
            return await self.region.commit(request)  # the region let it lapse: bind it again if still free

    async def keep_fresh(self, stop: asyncio.Event, interval_s: float = DEFAULT_REFRESH_S) -> None:
        """Refresh now and every ``interval_s`` until ``stop``; a region away is logged and retried."""
        while not stop.is_set():
            try:
                await self.refresh()
            except (Unavailable, Timeout) as error:
                log.debug("dhcp.cache.region_away", error=error.message)
            except Conflict as error:
                log.warning("dhcp.cache.refresh_failed", error=error.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def _renew_locally(self, request: LeaseCommitRequest) -> Lease:
        key = key_of(request.mac, request.ip)
        lease = self._leases.get(key)
        subnet = self._subnets.get(lease.subnet_id) if lease is not None else None
        renewed = local_renewal(lease, subnet, request, self.clock())
        if renewed is None:
            raise Unavailable(f"region away and no current binding of {request.ip} to {request.mac} in the cache")
        self._leases[key] = self._local[key] = renewed
        self._pending[key] = request.model_copy(update={"idempotency_key": None})
        self.counters.local_renewals += 1
        _ANSWERED_FROM_CACHE.set(True)
        log.debug("dhcp.cache.renewed_locally", mac=request.mac, ip=str(request.ip), expires_at=str(renewed.expires_at))
        return renewed

    def _remember(self, lease: Lease) -> None:
        self._leases[key_of(lease.mac, lease.ip)] = lease

    def _forget(self, key: LeaseKey) -> None:
        self._leases.pop(key, None)
        self._pending.pop(key, None)
        self._local.pop(key, None)
