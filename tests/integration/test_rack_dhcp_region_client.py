"""rack-dhcp's region client against a real region: typed errors come through, the subnet list is cached."""

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import Conflict, NotFound, Unavailable
from metalbus.contracts.leases import LeaseCommitRequest, LeaseOffer, LeaseOfferRequest, LeaseState, SubnetCreate
from metalbus.subjects import SUBNET_CREATE
from metalbus_rack_dhcp.region_batches import BatchingLeaseSource
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

MAC = "52:54:00:00:00:0a"
LINK = IPv4Address("10.20.0.2")
COMMIT = LeaseCommitRequest(rack_id="rack-1", mac=MAC, ip=IPv4Address("10.20.0.100"))


def subnet(third_octet: int) -> SubnetCreate:
    return SubnetCreate.model_validate(
        {
            "cidr": f"10.20.{third_octet}.0/24",
            "dynamic_start": f"10.20.{third_octet}.100",
            "dynamic_end": f"10.20.{third_octet}.199",
        }
    )


def offer_request(link: str) -> LeaseOfferRequest:
    return LeaseOfferRequest(rack_id="rack-1", mac=MAC, link_address=IPv4Address(link))


async def test_without_a_region_every_call_is_unavailable(bus: Bus) -> None:
    source = RegionLeaseSource(bus, timeout_s=1)

    with pytest.raises(Unavailable):
        await source.offer(offer_request("10.20.0.2"))
    with pytest.raises(Unavailable):
        await source.subnets()


async def test_region_errors_reach_the_caller_typed(nats_server: NatsServer, database_dsn: str, bus: Bus) -> None:
    source = RegionLeaseSource(bus, timeout_s=2)
    async with running_region(nats_server, database_dsn, "r1"):
        await eventually(lambda: source.subnets(), lambda subnets: subnets == [])

        with pytest.raises(NotFound):
            await source.offer(offer_request("10.99.0.2"))  # no subnet holds that link


async def test_subnet_list_is_fetched_again_only_after_the_cache_time(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    now = [0.0]
    source = RegionLeaseSource(bus, timeout_s=2, subnet_cache_s=5, clock=lambda: now[0])
    async with running_region(nats_server, database_dsn, "r1"):
        await eventually(lambda: bus.request(SUBNET_CREATE, subnet(0), timeout=5), lambda created: True)
        assert [str(known.cidr) for known in await source.subnets()] == ["10.20.0.0/24"]
        await bus.request(SUBNET_CREATE, subnet(1), timeout=5)

        now[0] = 4.9
        cached = [str(known.cidr) for known in await source.subnets()]
        now[0] = 5.0
        fresh = sorted(str(known.cidr) for known in await source.subnets())

    assert cached == ["10.20.0.0/24"]
    assert fresh == ["10.20.0.0/24", "10.20.1.0/24"]


def batching_source(bus: Bus, *, timeout_s: float = 2) -> BatchingLeaseSource:
    return BatchingLeaseSource(bus, RegionLeaseSource(bus, timeout_s=timeout_s), max_batch=64, max_in_flight=1)


async def test_a_storm_of_offers_and_commits_travels_in_few_batches_and_each_client_gets_its_own_lease(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    source = batching_source(bus)
    clients = [f"52:54:00:00:02:{index:02x}" for index in range(100)]
    async with running_region(nats_server, database_dsn, "r1"):
        await eventually(lambda: bus.request(SUBNET_CREATE, subnet(0), timeout=5), lambda created: True)

        offers = await asyncio.gather(
            *(source.offer(LeaseOfferRequest(rack_id="rack-1", mac=mac, link_address=LINK)) for mac in clients)
        )
        leases = await asyncio.gather(
            *(
                source.commit(LeaseCommitRequest(rack_id="rack-1", mac=offer.lease.mac, ip=offer.lease.ip))
                for offer in offers
            )
        )

    assert [offer.lease.mac for offer in offers] == clients
    assert len({offer.lease.ip for offer in offers}) == len(clients)
    assert {offer.subnet.cidr for offer in offers} == {IPv4Network("10.20.0.0/24")}
    assert [(lease.mac, lease.ip, lease.state) for lease in leases] == [
        (offer.lease.mac, offer.lease.ip, LeaseState.BOUND) for offer in offers
    ]
    assert source.offers.requests_sent == source.commits.requests_sent == len(clients)
    assert source.offers.batches_sent <= 4 and source.commits.batches_sent <= 4  # 100 calls, batches of at most 64


async def test_a_batched_refusal_reaches_only_its_caller_typed_and_a_silent_region_reaches_all(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    source = batching_source(bus, timeout_s=1)
    async with running_region(nats_server, database_dsn, "r1"):
        await eventually(lambda: bus.request(SUBNET_CREATE, subnet(0), timeout=5), lambda created: True)

        answers = await asyncio.gather(
            source.offer(offer_request("10.99.0.2")),  # no subnet holds that link
            source.offer(offer_request("10.20.0.2")),
            return_exceptions=True,
        )
        nak = await asyncio.gather(
            source.commit(LeaseCommitRequest(rack_id="rack-1", mac="52:54:00:00:00:0b", ip=IPv4Address("10.20.0.5"))),
            return_exceptions=True,
        )
    without_region = await asyncio.gather(
        source.offer(offer_request("10.20.0.2")), source.commit(COMMIT), return_exceptions=True
    )

    assert isinstance(answers[0], NotFound)
    assert isinstance(answers[1], LeaseOffer) and answers[1].lease.ip == IPv4Address("10.20.0.100")
    assert isinstance(nak[0], Conflict) and "not a dynamic address" in nak[0].message
    assert all(isinstance(answer, Unavailable) for answer in without_region), without_region
