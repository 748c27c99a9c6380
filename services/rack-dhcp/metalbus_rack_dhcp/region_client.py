"""The region as rack-dhcp's lease source: ``policy.LeaseSource`` over the bus; the only NATS talk of this service.

Every request carries an explicit timeout; the region's typed errors (NotFound, Conflict, Unavailable, Timeout)
reach the policy unchanged. The subnet list is cached for a few seconds: every ACK needs it.
"""

import time
from collections.abc import Callable, Sequence

from metalbus.bus import Bus
from metalbus.contracts.leases import (
    Lease,
    LeaseAck,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    Subnet,
    SubnetListQuery,
)
from metalbus.subjects import LEASE_COMMIT, LEASE_DECLINE, LEASE_OFFER, LEASE_RELEASE, LEASE_RENEW, SUBNET_LIST

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_SUBNET_CACHE_S = 5.0


class RegionLeaseSource:
    """Asks the region for every lease decision; remembers the subnet list for ``subnet_cache_s``."""

    def __init__(
        self,
        bus: Bus,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        subnet_cache_s: float = DEFAULT_SUBNET_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.subnet_cache_s = subnet_cache_s
        self.clock = clock
        self._subnets: list[Subnet] | None = None
        self._subnets_fetched_at = 0.0

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        offer = await self.bus.request(LEASE_OFFER, request, timeout=self.timeout_s)
        self.remember_subnet(offer.subnet)
        return offer

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        return await self.bus.request(LEASE_COMMIT, request, timeout=self.timeout_s)

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        return await self.bus.request(LEASE_RENEW, request, timeout=self.timeout_s)

    async def release(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self.bus.request(LEASE_RELEASE, request, timeout=self.timeout_s)

    async def decline(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self.bus.request(LEASE_DECLINE, request, timeout=self.timeout_s)

    async def subnets(self) -> Sequence[Subnet]:
        now = self.clock()
        if self._subnets is None or now - self._subnets_fetched_at >= self.subnet_cache_s:
            reply = await self.bus.request(SUBNET_LIST, SubnetListQuery(), timeout=self.timeout_s)
            self._subnets, self._subnets_fetched_at = list(reply.subnets), now
        return self._subnets

    def remember_subnet(self, subnet: Subnet) -> None:
        """An offer brings its subnet as it is now: the following ACK must not see an older copy."""
        if self._subnets is not None:
            self._subnets = [known for known in self._subnets if known.subnet_id != subnet.subnet_id] + [subnet]
