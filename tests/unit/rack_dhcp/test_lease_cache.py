"""The rack's lease cache: renewals answered while the region is away, DISCOVERs never, and reconciled later."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from metalbus.contracts.errors import Conflict, MetalbusError, NotFound, Timeout, Unavailable
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    RackSnapshot,
    Subnet,
)
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource, local_renewal, merged_leases

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
MAC = "52:54:00:12:34:56"
IP = IPv4Address("10.20.0.100")
SUBNET = Subnet(
    subnet_id=1,
    cidr=IPv4Network("10.20.0.0/24"),
    gateway=IPv4Address("10.20.0.1"),
    dns_servers=[],
    dynamic_start=IPv4Address("10.20.0.100"),
    dynamic_end=IPv4Address("10.20.0.199"),
    managed=True,
    lease_time_s=600,
    domain="maas.internal",
)
BOUND = Lease(
    ip=IP, mac=MAC, subnet_id=1, rack_id="rack-1", state=LeaseState.BOUND, expires_at=NOW + timedelta(seconds=300)
)
RENEW = LeaseCommitRequest(rack_id="rack-2", mac=MAC, ip=IP)


class FakeRegion:
    """Answers like the region, or raises ``away`` for every request while it is set."""

    def __init__(self) -> None:
        self.away: MetalbusError | None = None
        self.renew_error: MetalbusError | None = None
        self.renewed: list[LeaseCommitRequest] = []
        self.committed: list[LeaseCommitRequest] = []

    def _check(self) -> None:
        if self.away is not None:
            raise self.away

    def _bound(self, request: LeaseCommitRequest) -> Lease:
        return BOUND.model_copy(update={"rack_id": request.rack_id, "expires_at": NOW + timedelta(seconds=600)})

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        self._check()
        return LeaseOffer(lease=BOUND.model_copy(update={"state": LeaseState.OFFERED}), subnet=SUBNET)

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        self._check()
        self.committed.append(request)
        return self._bound(request)

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        self._check()
        if self.renew_error is not None:
            raise self.renew_error
        self.renewed.append(request)
        return self._bound(request)

    async def release(self, request: LeaseReleaseRequest) -> object:
        self._check()
        return None

    async def decline(self, request: LeaseReleaseRequest) -> object:
        self._check()
        return None

    async def subnets(self) -> Sequence[Subnet]:
        self._check()
        return [SUBNET]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def region() -> FakeRegion:
    return FakeRegion()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(region: FakeRegion, clock: Clock) -> CachedLeaseSource:
    async def snapshot() -> RackSnapshot:
        if region.away is not None:
            raise region.away
        return RackSnapshot(rack_id="rack-2", subnets=[SUBNET], leases=[BOUND], reserved={})

    cache = CachedLeaseSource(region, snapshot, clock=clock)
    await cache.refresh()
    return cache


def test_a_bound_current_lease_of_the_same_mac_and_address_is_extended_by_the_subnet_lease_time() -> None:
    renewed = local_renewal(BOUND, SUBNET, RENEW, NOW)

    assert renewed is not None
    assert renewed.expires_at == NOW + timedelta(seconds=600)
    assert (renewed.ip, renewed.state, renewed.rack_id) == (IP, LeaseState.BOUND, "rack-2")


@pytest.mark.parametrize(
    "lease",
    [
        None,
        BOUND.model_copy(update={"state": LeaseState.OFFERED}),
        BOUND.model_copy(update={"expires_at": NOW}),
        BOUND.model_copy(update={"mac": "52:54:00:00:00:01"}),
        BOUND.model_copy(update={"ip": IPv4Address("10.20.0.101")}),
        BOUND.model_copy(update={"subnet_id": 2}),
    ],
    ids=["unknown", "only_offered", "expired", "other_mac", "other_address", "other_subnet"],
)
def test_the_cache_renews_nothing_it_cannot_vouch_for(lease: Lease | None) -> None:
    assert local_renewal(lease, SUBNET, RENEW, NOW) is None


def test_a_local_renewal_reaching_further_than_the_snapshot_survives_a_refresh() -> None:
    later = BOUND.model_copy(update={"expires_at": NOW + timedelta(days=1)})
    earlier = BOUND.model_copy(update={"expires_at": NOW - timedelta(days=1)})

    assert list(merged_leases([BOUND], {(MAC, IP): later}).values()) == [later]
    assert list(merged_leases([BOUND], {(MAC, IP): earlier}).values()) == [BOUND]


@pytest.mark.parametrize("away", [Unavailable("no region"), Timeout("slow")], ids=["unavailable", "timeout"])
async def test_while_the_region_is_away_a_known_renewal_is_acked_locally_and_remembered(
    cache: CachedLeaseSource, region: FakeRegion, clock: Clock, away: MetalbusError
) -> None:
    region.away = away
    clock.now = NOW + timedelta(seconds=60)

    lease = await cache.renew(RENEW)

    assert lease.expires_at == clock.now + timedelta(seconds=600)
    assert cache.pending == [RENEW]
    assert await cache.subnets() == [SUBNET]


async def test_an_init_reboot_of_a_known_lease_is_acked_locally(cache: CachedLeaseSource, region: FakeRegion) -> None:
    region.away = Unavailable("no region")

    lease = await cache.commit(RENEW)

    assert (lease.ip, lease.state) == (IP, LeaseState.BOUND)
    assert cache.pending == [RENEW]


async def test_while_the_region_is_away_discovers_and_unknown_renewals_stay_unavailable(
    cache: CachedLeaseSource, region: FakeRegion
) -> None:
    region.away = Unavailable("no region")
    stranger = RENEW.model_copy(update={"mac": "52:54:00:00:00:01"})

    with pytest.raises(Unavailable):
        await cache.offer(LeaseOfferRequest(rack_id="rack-2", mac=MAC, link_address=IPv4Address("10.20.0.2")))
    with pytest.raises(Unavailable):
        await cache.renew(stranger)
    assert cache.pending == []


async def test_a_region_refusal_is_not_overridden_by_the_cache(cache: CachedLeaseSource, region: FakeRegion) -> None:
    region.renew_error = NotFound("no binding")

    with pytest.raises(NotFound):
        await cache.renew(RENEW)
    assert cache.pending == []


async def test_when_the_region_is_back_local_renewals_are_sent_as_renewals(
    cache: CachedLeaseSource, region: FakeRegion
) -> None:
    region.away = Unavailable("no region")
    await cache.renew(RENEW)
    region.away = None

    await cache.refresh()

    assert region.renewed == [RENEW]
    assert cache.pending == []
    assert cache.counters.reconciled == 1


async def test_a_lapsed_binding_is_reconciled_as_a_commit(cache: CachedLeaseSource, region: FakeRegion) -> None:
    region.away = Unavailable("no region")
    await cache.renew(RENEW)
    region.away, region.renew_error = None, NotFound("lapsed")

    await cache.reconcile()

    assert region.committed == [RENEW]
    assert cache.pending == []


async def test_a_renewal_the_region_refuses_is_dropped_from_cache_and_pending(
    cache: CachedLeaseSource, region: FakeRegion
) -> None:
    region.away = Unavailable("no region")
    await cache.renew(RENEW)
    region.away, region.renew_error = None, Conflict("someone else")

    async def refuse(request: LeaseCommitRequest) -> Lease:
        raise Conflict("held by another MAC")

    region.commit = refuse  # type: ignore[method-assign]
    await cache.reconcile()

    assert cache.pending == []
    assert cache.lease(MAC, IP) is None
    assert cache.counters.reconcile_refused == 1


async def test_while_the_region_stays_away_reconciliation_keeps_the_renewals(
    cache: CachedLeaseSource, region: FakeRegion
) -> None:
    region.away = Unavailable("no region")
    await cache.renew(RENEW)

    with pytest.raises(Unavailable):
        await cache.refresh()

    assert cache.pending == [RENEW]
    assert region.renewed == []


async def test_a_released_lease_is_forgotten(cache: CachedLeaseSource, region: FakeRegion) -> None:
    await cache.release(LeaseReleaseRequest(rack_id="rack-2", mac=MAC, ip=IP))
    region.away = Unavailable("no region")

    with pytest.raises(Unavailable):
        await cache.renew(RENEW)


async def test_a_refresh_replaces_the_snapshot_subnets_leases_and_keeps_those_of_other_subnets(
    region: FakeRegion, clock: Clock
) -> None:
    other = BOUND.model_copy(update={"ip": IPv4Address("10.30.0.100"), "subnet_id": 2})
    stale = BOUND.model_copy(update={"ip": IPv4Address("10.20.0.150")})
    cache = CachedLeaseSource(region, lambda: _snapshot([BOUND]), clock=clock)
    cache._leases = {(MAC, other.ip): other, (MAC, stale.ip): stale}

    await cache.refresh()

    assert cache.lease(MAC, other.ip) == other
    assert cache.lease(MAC, stale.ip) is None
    assert cache.lease(MAC, IP) == BOUND


async def _snapshot(leases: list[Lease]) -> RackSnapshot:
    return RackSnapshot(rack_id="rack-2", subnets=[SUBNET], leases=leases, reserved={})
