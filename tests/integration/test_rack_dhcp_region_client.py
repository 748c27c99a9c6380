"""rack-dhcp's region client against a real region: typed errors come through, the subnet list is cached."""

from ipaddress import IPv4Address

import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import NotFound, Unavailable
from metalbus.contracts.leases import LeaseOfferRequest, SubnetCreate
from metalbus.subjects import SUBNET_CREATE
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

MAC = "52:54:00:00:00:0a"


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
