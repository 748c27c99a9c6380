"""The region as a lease source whose offers and commits travel in batches (``region.leases.*.batch``).

A boot storm's DISCOVERs and REQUESTs reach the region as a few batch requests instead of one NATS round trip
and one transaction each (``request_batcher``); renewals, releases, declines and the subnet list are rarer and go
to the plain ``RegionLeaseSource`` this wraps. Each caller still gets its own lease or its own typed error.
"""

from collections.abc import Sequence

from metalbus.bus import Bus
from metalbus.contracts.errors import error_from_envelope
from metalbus.contracts.leases import (
    MAX_LEASE_BATCH,
    Lease,
    LeaseAck,
    LeaseCommitBatch,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferBatch,
    LeaseOfferRequest,
    LeaseOutcome,
    LeaseReleaseRequest,
    Subnet,
)
from metalbus.subjects import LEASE_COMMIT_BATCH, LEASE_OFFER_BATCH
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.request_batcher import RequestBatcher

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_IN_FLIGHT = 2


def lease_or_error(outcome: LeaseOutcome) -> Lease | BaseException:
    if outcome.error is not None:
        return error_from_envelope(outcome.error)
    if outcome.lease is None:
        return RuntimeError("the region answered a batched request with neither a lease nor an error")
    return outcome.lease


class BatchingLeaseSource:
    """``policy.LeaseSource``: offers and commits batched, everything else through ``region``."""

    def __init__(
        self,
        bus: Bus,
        region: RegionLeaseSource,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.bus = bus
        self.region = region
        batch = min(max_batch, MAX_LEASE_BATCH)
        self.offers: RequestBatcher[LeaseOfferRequest, LeaseOffer] = RequestBatcher(
            self._send_offers, max_batch=batch, max_in_flight=max_in_flight
        )
        self.commits: RequestBatcher[LeaseCommitRequest, Lease] = RequestBatcher(
            self._send_commits, max_batch=batch, max_in_flight=max_in_flight
        )

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        return await self.offers.submit(request)

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        return await self.commits.submit(request)

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        return await self.region.renew(request)

    async def release(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self.region.release(request)

    async def decline(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self.region.decline(request)

    async def subnets(self) -> Sequence[Subnet]:
        return await self.region.subnets()

    async def close(self) -> None:
        await self.offers.close()
        await self.commits.close()

    async def _send_offers(self, requests: list[LeaseOfferRequest]) -> list[LeaseOffer | BaseException]:
        reply = await self.bus.request(
            LEASE_OFFER_BATCH, LeaseOfferBatch(requests=requests), timeout=self.region.timeout_s
        )
        subnets = {subnet.subnet_id: subnet for subnet in reply.subnets}
        for subnet in subnets.values():
            self.region.remember_subnet(subnet)
        answers: list[LeaseOffer | BaseException] = []
        for outcome in reply.outcomes:
            lease = lease_or_error(outcome)
            if isinstance(lease, Lease) and lease.subnet_id not in subnets:
                lease = RuntimeError(f"the region offered {lease.ip} without its subnet {lease.subnet_id}")
            # Both parts were validated as the reply was decoded; validating instances again is only an isinstance
            # check each, which pydantic does faster than model_construct assigns fields in Python.
            answers.append(
                lease if not isinstance(lease, Lease) else LeaseOffer(lease=lease, subnet=subnets[lease.subnet_id])
            )
        return answers

    async def _send_commits(self, requests: list[LeaseCommitRequest]) -> list[Lease | BaseException]:
        reply = await self.bus.request(
            LEASE_COMMIT_BATCH, LeaseCommitBatch(requests=requests), timeout=self.region.timeout_s
        )
        return [lease_or_error(outcome) for outcome in reply.outcomes]
