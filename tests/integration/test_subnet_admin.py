"""Subnet and lease administration through the bus against a real region, NATS and PostgreSQL: updating a subnet,
listing leases, and which managed subnets each rack service serves."""

from ipaddress import IPv4Address, IPv4Interface

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, NotFound
from metalbus.contracts.leases import LeaseListQuery, LeaseReleaseRequest, LeaseState, SubnetListQuery, SubnetUpdate
from metalbus.contracts.racks import RackListQuery, RackServiceAnnouncement, RackServiceKind
from metalbus.subjects import LEASE_DECLINE, LEASE_LIST, RACK_ANNOUNCE, RACK_LIST, SUBNET_LIST, SUBNET_UPDATE
from tests.conftest import NatsServer
from tests.integration.test_leases import (
    MAC_A,
    MAC_B,
    MAC_C,
    create_subnet,
    ip,
    let_time_pass,
    offer,
    offer_and_commit,
    release,
)
from tests.integration.test_machines import database, region

MAC_D = "52:54:00:00:00:0d"
OTHER_LINK = IPv4Address("10.30.0.2")


async def subnet_row(conn: asyncpg.Connection, subnet_id: int) -> tuple[object, ...]:
    row = await conn.fetchrow(
        "SELECT host(dynamic_start), host(dynamic_end), host(gateway), dns_servers::text[], lease_time_s, managed "
        "FROM subnets WHERE subnet_id = $1",
        subnet_id,
    )
    assert row is not None
    return tuple(row)


async def test_update_changes_the_range_and_options_given_and_the_next_offer_follows_it(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        subnet = await create_subnet(bus)
        narrowed = SubnetUpdate(
            subnet_id=subnet.subnet_id,
            dynamic_start=ip(150),
            dynamic_end=ip(160),
            dns_servers=[ip(2), ip(3)],
            lease_time_s=3600,
        )
        updated = await bus.request(SUBNET_UPDATE, narrowed, timeout=5)
        first_offer = await offer(bus, MAC_A)
        end_only = await bus.request(SUBNET_UPDATE, SubnetUpdate(subnet_id=subnet.subnet_id, dynamic_end=ip(170)))
        listed = (await bus.request(SUBNET_LIST, SubnetListQuery(), timeout=5)).subnets
        row = await subnet_row(conn, subnet.subnet_id)
    assert (updated.dynamic_start, updated.dynamic_end, updated.dns_servers) == (ip(150), ip(160), [ip(2), ip(3)])
    assert (updated.lease_time_s, updated.gateway, updated.cidr, updated.domain) == (
        3600,
        subnet.gateway,
        subnet.cidr,
        subnet.domain,
    )
    assert first_offer.ip == ip(150), "offers come from the new range"
    assert (end_only.dynamic_start, end_only.dynamic_end, end_only.lease_time_s) == (ip(150), ip(170), 3600)
    assert listed == [end_only]
    assert row == ("10.20.0.150", "10.20.0.170", "10.20.0.1", ["10.20.0.2/32", "10.20.0.3/32"], 3600, True)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dynamic_start": "10.20.0.200", "dynamic_end": "10.20.0.150"}, "starts at 10.20.0.200, after its end"),
        ({"dynamic_start": "10.20.0.250", "dynamic_end": "10.21.0.10"}, "lies outside the host addresses"),
        ({"dynamic_start": "10.20.0.250"}, "starts at 10.20.0.250, after its end 10.20.0.199"),
        ({"dynamic_end": "10.20.0.255"}, "outside the host addresses of 10.20.0.0/24"),
        ({"gateway": "10.99.0.1"}, "gateway 10.99.0.1 is not a host address"),
    ],
)
async def test_an_update_that_makes_no_sense_is_a_bad_request_with_the_reason_and_changes_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus, fields: dict[str, str], reason: str
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        subnet = await create_subnet(bus)
        before = await subnet_row(conn, subnet.subnet_id)
        with pytest.raises(BadRequest) as refused:
            await bus.request(SUBNET_UPDATE, SubnetUpdate.model_validate({"subnet_id": subnet.subnet_id, **fields}))
        with pytest.raises(NotFound, match="no subnet 999"):
            await bus.request(SUBNET_UPDATE, SubnetUpdate(subnet_id=999, lease_time_s=60))
        after = await subnet_row(conn, subnet.subnet_id)
    assert refused.value.message.startswith("subnet 10.20.0.0/24: ") and reason in refused.value.message
    assert after == before


async def test_lease_list_filters_by_subnet_and_mac_and_active_only_keeps_unexpired_holders(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        first = await create_subnet(bus)
        second = await create_subnet(
            bus, "10.30.0.0/24", gateway="10.30.0.1", dynamic_start="10.30.0.100", dynamic_end="10.30.0.110"
        )
        bound_a = await offer_and_commit(bus, MAC_A)
        offered_b = await offer(bus, MAC_B)
        gone_c = await offer_and_commit(bus, MAC_C)
        await release(bus, MAC_C, gone_c.ip)
        declined_d = await offer(bus, MAC_D)
        await bus.request(LEASE_DECLINE, LeaseReleaseRequest(rack_id="rack-1", mac=MAC_D, ip=declined_d.ip), timeout=5)
        bound_a_elsewhere = await offer_and_commit(bus, MAC_A, link=OTHER_LINK)
        expired_b = await offer(bus, MAC_B, link=OTHER_LINK)
        await conn.execute(
            "UPDATE leases SET expires_at = now() - interval '1 second' WHERE subnet_id = $1 AND mac = $2::macaddr",
            second.subnet_id,
            MAC_B,
        )

        async def listed(**query: object) -> list[tuple[str, IPv4Address, LeaseState]]:
            leases = (await bus.request(LEASE_LIST, LeaseListQuery.model_validate(query), timeout=5)).leases
            return [(lease.mac, lease.ip, lease.state) for lease in leases]

        active_first = await listed(subnet_id=first.subnet_id)
        everything_first = await listed(subnet_id=first.subnet_id, active_only=False)
        active_a = await listed(mac="52-54-00-00-00-0A")
        a_in_second = await listed(mac=MAC_A, subnet_id=second.subnet_id)
        all_active = await listed()
        all_b = await listed(mac=MAC_B, active_only=False)
        await let_time_pass(conn, MAC_A)
        active_a_later = await listed(mac=MAC_A)
    assert active_first == [
        (MAC_A, bound_a.ip, LeaseState.BOUND),
        (MAC_B, offered_b.ip, LeaseState.OFFERED),
        (MAC_D, declined_d.ip, LeaseState.DECLINED),
    ]
    assert (MAC_C, gone_c.ip, LeaseState.RELEASED) in everything_first and len(everything_first) == 4
    assert active_a == [(MAC_A, bound_a.ip, LeaseState.BOUND), (MAC_A, bound_a_elsewhere.ip, LeaseState.BOUND)]
    assert a_in_second == [(MAC_A, bound_a_elsewhere.ip, LeaseState.BOUND)]
    assert all_active == [*active_first, (MAC_A, bound_a_elsewhere.ip, LeaseState.BOUND)]
    assert all_b == [(MAC_B, offered_b.ip, LeaseState.OFFERED), (MAC_B, expired_b.ip, LeaseState.OFFERED)]
    assert active_a_later == []


async def announce(bus: Bus, rack_id: str, service: RackServiceKind, *interfaces: str) -> None:
    announcement = RackServiceAnnouncement(
        rack_id=rack_id,
        service=service,
        hostname=f"lab-{rack_id}",
        version="0.1.0",
        heartbeat_interval_s=30,
        interfaces=[IPv4Interface(interface) for interface in interfaces],
    )
    await bus.request(RACK_ANNOUNCE, announcement, timeout=5)


async def test_rack_list_tells_each_service_the_managed_subnets_its_interfaces_sit_on(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        provisioning = await create_subnet(bus)
        other = await create_subnet(
            bus, "10.30.0.0/24", gateway="10.30.0.1", dynamic_start="10.30.0.100", dynamic_end="10.30.0.110"
        )
        unmanaged = await create_subnet(bus, "192.168.1.0/24", gateway=None, dns_servers=[], managed=False,
                                        dynamic_start=None, dynamic_end=None)  # fmt: skip
        await announce(bus, "rack-a", RackServiceKind.DHCP, "10.20.0.2/24", "192.168.1.5/24", "10.30.0.2/24")
        await announce(bus, "rack-a", RackServiceKind.POWER, "192.168.1.5/24")
        await announce(bus, "rack-b", RackServiceKind.DHCP, "10.30.0.3/16")  # a wider prefix: the address counts
        await announce(bus, "rack-b", RackServiceKind.TFTP)
        racks = (await bus.request(RACK_LIST, RackListQuery(), timeout=5)).racks
    served = {(rack.rack_id, s.service): s.served_subnet_ids for rack in racks for s in rack.services}
    assert unmanaged.managed is False
    assert served == {
        ("rack-a", RackServiceKind.DHCP): [provisioning.subnet_id, other.subnet_id],
        ("rack-a", RackServiceKind.POWER): [],
        ("rack-b", RackServiceKind.DHCP): [other.subnet_id],
        ("rack-b", RackServiceKind.TFTP): [],
    }
