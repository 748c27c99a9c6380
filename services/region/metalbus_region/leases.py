"""The region's DHCP answers for rack-dhcp (subnets, offer/commit/renew/release/decline, a rack's snapshot) and
the operator's subnet updates and lease listing.

Decisions (which addresses to try and in what order, whether a request may bind an address, whether a new
subnet makes sense) are small pure functions; the SQL lives in ``lease_store`` and ``subnet_store``. That two
racks never hold one address is PostgreSQL's job (a partial unique index), so concurrent offers that lose a
race simply try the next address.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import Enum
from ipaddress import IPv4Address, IPv4Network

import structlog

from metalbus.contracts.errors import BadRequest, Conflict, NotFound
from metalbus.contracts.leases import (
    Lease,
    LeaseAck,
    LeaseCommitRequest,
    LeaseEvent,
    LeaseList,
    LeaseListQuery,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    RackSnapshot,
    RackSnapshotQuery,
    Subnet,
    SubnetCreate,
    SubnetList,
    SubnetListQuery,
    SubnetUpdate,
)
from metalbus.db.pool import DbConnection
from metalbus.subjects import (
    EVENT_LEASE,
    LEASE_COMMIT,
    LEASE_DECLINE,
    LEASE_LIST,
    LEASE_OFFER,
    LEASE_RELEASE,
    LEASE_RENEW,
    RACK_SNAPSHOT,
    SUBNET_CREATE,
    SUBNET_LIST,
    SUBNET_UPDATE,
)
from metalbus_region import lease_store, subnet_store
from metalbus_region.context import RegionContext, Route
from metalbus_region.idempotency import apply_once
from metalbus_region.outbox import record_event

log = structlog.get_logger("metalbus.region.leases")

OFFER_HOLD = timedelta(seconds=60)  # an offer keeps its address this long unless the client requests it
QUARANTINE = timedelta(minutes=10)  # a declined address is offered to nobody for this long
FREE_CANDIDATES = 8  # lowest free addresses tried per attempt
MAX_OFFER_ATTEMPTS = 6  # fresh looks at the pool before giving up on a contended one


# -- decisions (pure) -----------------------------------------------------------------------------------------
def host_addresses(network: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """First and last address a host may use: not the network or broadcast address (except in /31, /32)."""
    if network.prefixlen >= 31:
        return network.network_address, network.broadcast_address
    return network.network_address + 1, network.broadcast_address - 1


def is_host_of(network: IPv4Network, address: IPv4Address) -> bool:
    first, last = host_addresses(network)
    return first <= address <= last


def subnet_create_problem(create: SubnetCreate) -> str | None:
    """Why the subnet makes no sense, or None. The reason goes back to the caller as it is."""
    start, end = create.dynamic_start, create.dynamic_end
    if (start is None) != (end is None):
        return "dynamic_start and dynamic_end go together: give both or neither"
    if start is not None and end is not None:
        if start > end:
            return f"dynamic range starts at {start}, after its end {end}"
        if not (is_host_of(create.cidr, start) and is_host_of(create.cidr, end)):
            return f"dynamic range {start}-{end} lies outside the host addresses of {create.cidr}"
    if create.gateway is not None and not is_host_of(create.cidr, create.gateway):
        return f"gateway {create.gateway} is not a host address of {create.cidr}"
    outside = [str(ip) for ip in create.reserved if ip not in create.cidr]
    if outside:
        return f"reserved addresses {', '.join(outside)} lie outside {create.cidr}"
    return None


def updated_subnet(current: Subnet, update: SubnetUpdate) -> SubnetCreate:
    """The subnet as ``update`` would leave it, in the shape ``subnet_create_problem`` judges."""
    changes = update.model_dump(exclude_none=True, exclude={"schema_version", "subnet_id"})
    return SubnetCreate.model_validate(current.model_dump(exclude={"schema_version", "subnet_id"}) | changes)


def in_dynamic_range(subnet: Subnet, address: IPv4Address) -> bool:
    if subnet.dynamic_start is None or subnet.dynamic_end is None:
        return False
    return subnet.dynamic_start <= address <= subnet.dynamic_end


def never_offered(subnet: Subnet) -> list[IPv4Address]:
    """Addresses of the subnet's own infrastructure: the gateway and the DNS servers."""
    return [*([subnet.gateway] if subnet.gateway is not None else []), *subnet.dns_servers]


def preferred_addresses(
    subnet: Subnet, previous: IPv4Address | None, requested: IPv4Address | None
) -> list[IPv4Address]:
    """The MAC's previous address, then the one it asks for: those that the dynamic range may hand out."""
    infrastructure = set(never_offered(subnet))
    chosen: list[IPv4Address] = []
    for address in (previous, requested):
        if address is None or address in chosen or address in infrastructure:
            continue
        if in_dynamic_range(subnet, address):
            chosen.append(address)
    return chosen


def offer_candidates(
    preferred: Iterable[IPv4Address], taken: set[IPv4Address], lowest_free: Iterable[IPv4Address]
) -> list[IPv4Address]:
    """The order to try addresses in: free preferred ones first, then the lowest free ones, each once."""
    ordered: list[IPv4Address] = []
    for address in (*(a for a in preferred if a not in taken), *lowest_free):
        if address not in ordered:
            ordered.append(address)
    return ordered


def is_active(lease: Lease, now: datetime) -> bool:
    return lease.state in (LeaseState.OFFERED, LeaseState.BOUND) and lease.expires_at > now


class CommitAction(Enum):
    BIND_HELD = "bind the MAC's own offer or binding"
    BIND_FREE = "bind a free address (init-reboot)"


def commit_action(subnet: Subnet, holder: Lease | None, mac: str, ip: IPv4Address, reserved: bool) -> CommitAction:
    """What a DHCPREQUEST for ``ip`` by ``mac`` does; Conflict (a NAK) when the MAC may not have it."""
    if holder is not None:
        if holder.mac == mac and holder.state in (LeaseState.OFFERED, LeaseState.BOUND):
            return CommitAction.BIND_HELD
        if holder.state is LeaseState.DECLINED:
            raise Conflict(f"{ip} is quarantined after a decline until {holder.expires_at.isoformat()}")
        raise Conflict(f"{ip} is held by another client")
    if reserved or ip in never_offered(subnet) or not in_dynamic_range(subnet, ip):
        raise Conflict(f"{ip} is not a dynamic address of subnet {subnet.cidr}")
    return CommitAction.BIND_FREE


# -- handlers -------------------------------------------------------------------------------------------------
async def record_lease_change(conn: DbConnection, lease: Lease) -> None:
    await record_event(
        conn,
        EVENT_LEASE,
        lambda sequence, at: LeaseEvent(sequence=sequence, lease=lease, at=at),
        subnet_id=str(lease.subnet_id),
    )


async def expire_stale(conn: DbConnection, subnet_id: int, now: datetime) -> None:
    for lease in await lease_store.expire_stale(conn, subnet_id, now):
        await record_lease_change(conn, lease)


def binding_of(request: LeaseCommitRequest, subnet: Subnet, now: datetime) -> Lease:
    """The binding a DHCPREQUEST asks for: its address for its MAC, for the subnet's lease time from ``now``."""
    return Lease(
        ip=request.ip,
        mac=request.mac,
        subnet_id=subnet.subnet_id,
        rack_id=request.rack_id,
        state=LeaseState.BOUND,
        expires_at=now + timedelta(seconds=subnet.lease_time_s),
        hostname=request.hostname,
    )


async def bind_requested(conn: DbConnection, request: LeaseCommitRequest, now: datetime) -> Lease:
    """The whole DHCPREQUEST rule set in the caller's transaction: bind the MAC's own offer or binding, or a free
    dynamic address (init-reboot, moving the MAC off its other active lease); Conflict (a NAK) otherwise."""
    subnet = await subnet_store.managed_subnet_containing(conn, request.ip)
    if subnet is None:
        raise Conflict(f"{request.ip} is not in a managed subnet")
    await expire_stale(conn, subnet.subnet_id, now)
    holder = await lease_store.holder_for_update(conn, request.ip)
    reserved = holder is None and await subnet_store.is_reserved(conn, subnet.subnet_id, request.ip)
    action = commit_action(subnet, holder, request.mac, request.ip, reserved)
    if action is CommitAction.BIND_HELD:
        assert holder is not None
        expires_at = binding_of(request, subnet, now).expires_at
        lease = await lease_store.bind(
            conn, holder, now, hostname=request.hostname, rack_id=request.rack_id, expires_at=expires_at
        )
    else:
        for moved_from in await lease_store.release_other_active(conn, subnet.subnet_id, request.mac, request.ip, now):
            await record_lease_change(conn, moved_from)
        inserted = await lease_store.insert_lease(conn, binding_of(request, subnet, now), now, skip_if_contended=False)
        if inserted is None:
            raise Conflict(f"{request.ip} was taken by another client meanwhile")
        lease = inserted
    await record_lease_change(conn, lease)
    return lease


class LeaseHandlers:
    def __init__(self, ctx: RegionContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        return [
            (SUBNET_CREATE, self.create_subnet),
            (SUBNET_LIST, self.list_subnets),
            (SUBNET_UPDATE, self.update_subnet),
            (LEASE_LIST, self.list_leases),
            (LEASE_OFFER, self.offer),
            (LEASE_COMMIT, self.commit),
            (LEASE_RENEW, self.renew),
            (LEASE_RELEASE, self.release),
            (LEASE_DECLINE, self.decline),
            (RACK_SNAPSHOT, self.snapshot),
        ]

    async def create_subnet(self, create: SubnetCreate) -> Subnet:
        problem = subnet_create_problem(create)
        if problem is not None:
            raise BadRequest(f"subnet {create.cidr}: {problem}")
        async with self.ctx.database.connection() as conn:
            subnet = await subnet_store.insert_subnet(conn, create)
        log.info("subnet.created", subnet_id=subnet.subnet_id, cidr=str(subnet.cidr))
        return subnet

    async def list_subnets(self, _: SubnetListQuery) -> SubnetList:
        async with self.ctx.database.connection() as conn:
            return SubnetList(subnets=await subnet_store.list_subnets(conn))

    async def update_subnet(self, update: SubnetUpdate) -> Subnet:
        """Checked as a new subnet would be; leases outside a narrowed range keep their address until they end."""
        async with self.ctx.database.connection() as conn, conn.transaction():
            current = await subnet_store.subnet_for_update(conn, update.subnet_id)
            if current is None:
                raise NotFound(f"no subnet {update.subnet_id}")
            wanted = updated_subnet(current, update)
            problem = subnet_create_problem(wanted)
            if problem is not None:
                raise BadRequest(f"subnet {current.cidr}: {problem}")
            subnet = await subnet_store.update_subnet(conn, update.subnet_id, wanted)
        log.info("subnet.updated", subnet_id=subnet.subnet_id, cidr=str(subnet.cidr))
        return subnet

    async def list_leases(self, query: LeaseListQuery) -> LeaseList:
        async with self.ctx.database.connection() as conn:
            leases = await lease_store.list_leases(
                conn, subnet_id=query.subnet_id, mac=query.mac, active_only=query.active_only, now=self.ctx.clock()
            )
        return LeaseList(leases=leases)

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        now = self.ctx.clock()
        async with self.ctx.database.connection() as conn, conn.transaction():
            subnet = await subnet_store.managed_subnet_containing(conn, request.link_address)
            if subnet is None:
                raise NotFound(f"no managed subnet holds link address {request.link_address}")
            lease = await self._allocate(conn, subnet, request, now)
        self.ctx.outbox.wake()
        log.debug("lease.offered", mac=lease.mac, ip=str(lease.ip), rack_id=request.rack_id)
        return LeaseOffer(lease=lease, subnet=subnet)

    async def _allocate(self, conn: DbConnection, subnet: Subnet, request: LeaseOfferRequest, now: datetime) -> Lease:
        for _ in range(MAX_OFFER_ATTEMPTS):
            await expire_stale(conn, subnet.subnet_id, now)
            latest = await lease_store.latest_of_mac(conn, subnet.subnet_id, request.mac)
            if latest is not None and is_active(latest, now):
                return await self._keep(conn, latest, now)
            lease = await self._claim_free(conn, subnet, request, latest, now)
            if lease is not None:
                await record_lease_change(conn, lease)
                return lease
        raise Conflict(f"address pool of subnet {subnet.cidr} is contended; try again")

    async def _keep(self, conn: DbConnection, active: Lease, now: datetime) -> Lease:
        """The MAC already has this lease: a binding stays as it is, an offer is held a while longer."""
        if active.state is LeaseState.BOUND:
            return active
        refreshed = await lease_store.refresh_offer(conn, active.ip, active.mac, now + OFFER_HOLD, now)
        await record_lease_change(conn, refreshed)
        return refreshed

    async def _claim_free(
        self, conn: DbConnection, subnet: Subnet, request: LeaseOfferRequest, latest: Lease | None, now: datetime
    ) -> Lease | None:
        """Offer the first free candidate; None if every candidate was taken meanwhile (look again)."""
        if subnet.dynamic_start is None or subnet.dynamic_end is None:
            raise Conflict(f"address pool of subnet {subnet.cidr} is exhausted: it has no dynamic range")
        offer = Lease(
            ip=subnet.dynamic_start,
            mac=request.mac,
            subnet_id=subnet.subnet_id,
            rack_id=request.rack_id,
            state=LeaseState.OFFERED,
            expires_at=now + OFFER_HOLD,
            hostname=request.hostname,
        )
        preferred = preferred_addresses(subnet, latest.ip if latest else None, request.requested_ip)
        taken = await lease_store.taken_among(conn, subnet.subnet_id, preferred)
        lowest = await lease_store.lowest_free(
            conn, subnet.subnet_id, subnet.dynamic_start, subnet.dynamic_end, never_offered(subnet), FREE_CANDIDATES
        )
        candidates = offer_candidates(preferred, taken, lowest)
        if not candidates:
            log.info("lease.pool_exhausted", subnet_id=subnet.subnet_id, mac=request.mac, rack_id=request.rack_id)
            raise Conflict(f"address pool of subnet {subnet.cidr} is exhausted")
        return await self._insert_first(conn, offer, candidates, now)

    async def _insert_first(
        self, conn: DbConnection, offer: Lease, candidates: list[IPv4Address], now: datetime
    ) -> Lease | None:
        """Skip addresses another transaction is trying right now; if all were, wait for their outcome."""
        for skip_if_contended in (True, False):
            for address in candidates:
                lease = await lease_store.insert_lease(
                    conn, offer.model_copy(update={"ip": address}), now, skip_if_contended=skip_if_contended
                )
                if lease is not None:
                    return lease
        return None

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        async with self.ctx.database.connection() as conn:
            lease = await apply_once(
                conn,
                request.idempotency_key,
                LEASE_COMMIT.pattern,
                Lease,
                lambda c: bind_requested(c, request, self.ctx.clock()),
            )
        self.ctx.outbox.wake()
        log.debug("lease.committed", mac=lease.mac, ip=str(lease.ip), rack_id=request.rack_id)
        return lease

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        async def extend(conn: DbConnection) -> Lease:
            lease = await lease_store.renew(conn, request.ip, request.mac, request.rack_id, self.ctx.clock())
            if lease is None:
                raise NotFound(f"{request.mac} holds no current binding of {request.ip}")
            await record_lease_change(conn, lease)
            return lease

        async with self.ctx.database.connection() as conn:
            lease = await apply_once(conn, request.idempotency_key, LEASE_RENEW.pattern, Lease, extend)
        self.ctx.outbox.wake()
        return lease

    async def release(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self._end(request, LeaseState.RELEASED, timedelta(0))

    async def decline(self, request: LeaseReleaseRequest) -> LeaseAck:
        return await self._end(request, LeaseState.DECLINED, QUARANTINE)

    async def _end(self, request: LeaseReleaseRequest, state: LeaseState, hold: timedelta) -> LeaseAck:
        """The MAC gives its address back (released) or reports it in use by someone else (declined)."""
        now = self.ctx.clock()
        async with self.ctx.database.connection() as conn, conn.transaction():
            lease = await lease_store.end_active(conn, request.ip, request.mac, state, now + hold, now)
            if lease is not None:
                await record_lease_change(conn, lease)
        if lease is not None:
            self.ctx.outbox.wake()
            log.info(f"lease.{state.value}", mac=lease.mac, ip=str(lease.ip), rack_id=request.rack_id)
        return LeaseAck(lease=lease)

    async def snapshot(self, query: RackSnapshotQuery) -> RackSnapshot:
        now = self.ctx.clock()
        async with (
            self.ctx.database.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            subnets = await subnet_store.subnets_of_rack(conn, query.rack_id)
            subnet_ids = [subnet.subnet_id for subnet in subnets]
            leases = await lease_store.current_leases(conn, subnet_ids, now)
            reserved = await subnet_store.reserved_addresses(conn, subnet_ids)
        return RackSnapshot(rack_id=query.rack_id, subnets=subnets, leases=leases, reserved=reserved)


def routes(ctx: RegionContext) -> list[Route]:
    return LeaseHandlers(ctx).routes()
