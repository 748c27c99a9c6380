"""Many DHCP offers or commits in one region transaction: rack-dhcp's fast path for boot storms.

Each outcome is what the lone request (``leases.LeaseHandlers.offer`` / ``commit``) would have answered, by the
same rules (``leases``' pure decisions), but a batch costs a handful of statements instead of a dozen per
request: subnets are read once, the MACs' latest leases in one query, free addresses in one pass, offers inserted
and bindings updated with one statement each, events recorded together. What the set-based path cannot decide
(a lost race, an init-reboot onto a free address, a NAK) falls back to the lone request's code inside a
savepoint, so one refusal never undoes the rest of the batch.
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from ipaddress import IPv4Address

import structlog

from metalbus.contracts.errors import Conflict, MetalbusError, NotFound
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitBatch,
    LeaseCommitBatchReply,
    LeaseCommitRequest,
    LeaseEvent,
    LeaseOfferBatch,
    LeaseOfferBatchReply,
    LeaseOfferRequest,
    LeaseOutcome,
    LeaseState,
    Subnet,
)
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_LEASE, LEASE_COMMIT_BATCH, LEASE_OFFER_BATCH
from metalbus_region import lease_store, subnet_store
from metalbus_region.context import RegionContext, Route
from metalbus_region.leases import (
    FREE_CANDIDATES,
    MAX_OFFER_ATTEMPTS,
    OFFER_HOLD,
    bind_requested,
    binding_of,
    is_active,
    never_offered,
    preferred_addresses,
)
from metalbus_region.outbox import record_events

log = structlog.get_logger("metalbus.region.lease_batches")

Outcome = Lease | MetalbusError


# -- decisions (pure) -----------------------------------------------------------------------------------------
def managed_subnet_for(subnets: Sequence[Subnet], address: IPv4Address) -> Subnet | None:
    """The managed subnet whose CIDR holds ``address`` (subnets never overlap)."""
    return next((subnet for subnet in subnets if subnet.managed and address in subnet.cidr), None)


def first_request_per_mac(requests: Sequence[LeaseOfferRequest]) -> dict[str, LeaseOfferRequest]:
    """A client that retransmitted its DISCOVER within one batch is decided once, by its first request."""
    firsts: dict[str, LeaseOfferRequest] = {}
    for request in requests:
        firsts.setdefault(request.mac, request)
    return firsts


def assign_addresses(
    preferences: dict[str, list[IPv4Address]], taken: set[IPv4Address], free: Sequence[IPv4Address]
) -> dict[str, IPv4Address]:
    """An address per MAC, each address to one MAC: first every MAC's own free preferred address (its previous
    one, then the one it asked for), then the lowest free addresses nobody of the batch was given, in MAC order.
    MACs left out found the pool exhausted."""
    given: dict[str, IPv4Address] = {}
    claimed: set[IPv4Address] = set()
    for mac, preferred in preferences.items():
        address = next((a for a in preferred if a not in taken and a not in claimed), None)
        if address is not None:
            given[mac] = address
            claimed.add(address)
    spare = iter(address for address in free if address not in claimed)
    for mac in preferences:
        if mac not in given:
            address = next(spare, None)
            if address is None:
                break
            given[mac] = address
    return given


def outcome_of(result: Outcome) -> LeaseOutcome:
    if isinstance(result, MetalbusError):
        return LeaseOutcome(error=result.to_envelope())
    return LeaseOutcome(lease=result)


def lease_event_builds(leases: Sequence[Lease]) -> list[tuple[Callable[[int, datetime], LeaseEvent], dict[str, str]]]:
    def build(lease: Lease) -> Callable[[int, datetime], LeaseEvent]:
        return lambda sequence, at: LeaseEvent(sequence=sequence, lease=lease, at=at)

    return [(build(lease), {"subnet_id": str(lease.subnet_id)}) for lease in leases]


# -- handlers -------------------------------------------------------------------------------------------------
class LeaseBatchHandlers:
    def __init__(self, ctx: RegionContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        return [(LEASE_OFFER_BATCH, self.offer_batch), (LEASE_COMMIT_BATCH, self.commit_batch)]

    async def offer_batch(self, batch: LeaseOfferBatch) -> LeaseOfferBatchReply:
        now = self.ctx.clock()
        async with self.ctx.database.connection() as conn, conn.transaction():
            subnets = await subnet_store.list_subnets(conn)
            homes = [managed_subnet_for(subnets, request.link_address) for request in batch.requests]
            changed: list[Lease] = []
            offers: dict[tuple[int, str], Outcome] = {}
            for subnet in subnets:
                asking = [request for request, home in zip(batch.requests, homes, strict=True) if home is subnet]
                if asking:
                    decided, subnet_changes = await self._offer_in_subnet(conn, subnet, asking, now)
                    offers |= {(subnet.subnet_id, mac): outcome for mac, outcome in decided.items()}
                    changed += subnet_changes
            await record_events(conn, EVENT_LEASE, lease_event_builds(changed))
        if changed:
            self.ctx.outbox.wake()
        outcomes: list[Outcome] = [
            offers[(home.subnet_id, request.mac)]
            if home is not None
            else NotFound(f"no managed subnet holds link address {request.link_address}")
            for request, home in zip(batch.requests, homes, strict=True)
        ]
        offered_subnets = {outcome.subnet_id for outcome in outcomes if isinstance(outcome, Lease)}
        return LeaseOfferBatchReply(
            outcomes=[outcome_of(outcome) for outcome in outcomes],
            subnets=[subnet for subnet in subnets if subnet.subnet_id in offered_subnets],
        )

    async def _offer_in_subnet(
        self, conn: DbConnection, subnet: Subnet, requests: list[LeaseOfferRequest], now: datetime
    ) -> tuple[dict[str, Outcome], list[Lease]]:
        """Offers for these MACs (one request each) and every lease that changed on the way (for events)."""
        await lease_store.lock_pool(conn, subnet.subnet_id)
        changed = await lease_store.expire_stale(conn, subnet.subnet_id, now)
        results: dict[str, Outcome] = {}
        pending = first_request_per_mac(requests)
        for _ in range(MAX_OFFER_ATTEMPTS):
            if not pending:
                break
            latest = await lease_store.latest_of_macs(conn, subnet.subnet_id, list(pending))
            active = [lease for lease in latest.values() if is_active(lease, now)]
            bound = [lease for lease in active if lease.state is LeaseState.BOUND]
            refreshed = await lease_store.refresh_offers(
                conn, [lease for lease in active if lease.state is LeaseState.OFFERED], now + OFFER_HOLD, now
            )
            changed += refreshed
            for lease in (*bound, *refreshed):
                results[lease.mac] = lease
                del pending[lease.mac]
            inserted, exhausted = await self._claim_free(conn, subnet, pending, latest, now)
            changed += inserted
            for lease in inserted:
                results[lease.mac] = lease
                del pending[lease.mac]
            for mac in exhausted:
                results[mac] = Conflict(f"address pool of subnet {subnet.cidr} is exhausted")
                del pending[mac]
        for mac in pending:
            results[mac] = Conflict(f"address pool of subnet {subnet.cidr} is contended; try again")
        return results, changed

    async def _claim_free(
        self,
        conn: DbConnection,
        subnet: Subnet,
        pending: dict[str, LeaseOfferRequest],
        latest: dict[str, Lease],
        now: datetime,
    ) -> tuple[list[Lease], list[str]]:
        """Offer free addresses to the pending MACs: (offers inserted, MACs for which no address was left).
        MACs in neither lost a race with another transaction and look again."""
        if not pending:
            return [], []
        if subnet.dynamic_start is None or subnet.dynamic_end is None:
            return [], list(pending)
        preferences = {
            mac: preferred_addresses(subnet, latest[mac].ip if mac in latest else None, request.requested_ip)
            for mac, request in pending.items()
        }
        wanted = sorted({address for preferred in preferences.values() for address in preferred})
        taken = await lease_store.taken_among(conn, subnet.subnet_id, wanted)
        free = await lease_store.lowest_free(
            conn,
            subnet.subnet_id,
            subnet.dynamic_start,
            subnet.dynamic_end,
            never_offered(subnet),
            len(pending) + len(wanted) + FREE_CANDIDATES,
        )
        given = assign_addresses(preferences, taken, free)
        offers = [
            Lease(
                ip=address,
                mac=mac,
                subnet_id=subnet.subnet_id,
                rack_id=pending[mac].rack_id,
                state=LeaseState.OFFERED,
                expires_at=now + OFFER_HOLD,
                hostname=pending[mac].hostname,
            )
            for mac, address in given.items()
        ]
        inserted = await lease_store.insert_leases(conn, offers, now) if offers else []
        exhausted = [mac for mac in pending if mac not in given]
        if exhausted:
            log.info("lease.pool_exhausted", subnet_id=subnet.subnet_id, macs=len(exhausted))
        return inserted, exhausted

    async def commit_batch(self, batch: LeaseCommitBatch) -> LeaseCommitBatchReply:
        now = self.ctx.clock()
        async with self.ctx.database.connection() as conn, conn.transaction():
            subnets = await subnet_store.list_subnets(conn)
            results: list[Outcome | None] = [None] * len(batch.requests)
            wanted: dict[tuple[IPv4Address, str], Lease] = {}
            for index, request in enumerate(batch.requests):
                subnet = managed_subnet_for(subnets, request.ip)
                if subnet is None:
                    results[index] = Conflict(f"{request.ip} is not in a managed subnet")
                    continue
                wanted.setdefault((request.ip, request.mac), binding_of(request, subnet, now))
            held = await lease_store.bind_held(conn, list(wanted.values()), now)
            bound = {(lease.ip, lease.mac): lease for lease in held}
            await record_events(conn, EVENT_LEASE, lease_event_builds(list(bound.values())))
            for index, request in enumerate(batch.requests):
                if results[index] is None:
                    results[index] = bound.get((request.ip, request.mac)) or await self._commit_alone(
                        conn, request, now
                    )
        self.ctx.outbox.wake()
        return LeaseCommitBatchReply(outcomes=[outcome_of(result) for result in results if result is not None])

    @staticmethod
    async def _commit_alone(conn: DbConnection, request: LeaseCommitRequest, now: datetime) -> Outcome:
        """The lone commit's rules for a request the set-based bind did not match, in a savepoint."""
        try:
            async with conn.transaction():
                return await bind_requested(conn, request, now)
        except MetalbusError as error:
            return error


def routes(ctx: RegionContext) -> list[Route]:
    return LeaseBatchHandlers(ctx).routes()
