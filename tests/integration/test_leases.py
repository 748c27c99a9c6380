"""DHCP leases and subnets through the bus against real region replicas, PostgreSQL and NATS."""

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface

import asyncpg
import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, Conflict, NotFound
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseEvent,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    RackSnapshotQuery,
    Subnet,
    SubnetCreate,
    SubnetListQuery,
)
from metalbus.contracts.racks import RackServiceAnnouncement, RackServiceKind
from metalbus.subjects import (
    EVENT_LEASE,
    EVENTS_STREAM,
    LEASE_COMMIT,
    LEASE_DECLINE,
    LEASE_OFFER,
    LEASE_RELEASE,
    LEASE_RENEW,
    RACK_ANNOUNCE,
    RACK_SNAPSHOT,
    REGION_HEALTH,
    SUBNET_CREATE,
    SUBNET_LIST,
)
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

LINK = IPv4Address("10.20.0.2")  # the rack's own address on 10.20.0.0/24
MAC_A, MAC_B, MAC_C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"


def ip(last_octet: int, prefix: str = "10.20.0") -> IPv4Address:
    return IPv4Address(f"{prefix}.{last_octet}")


async def wait_until_replicas_ready(bus: Bus, replica_ids: set[str]) -> None:
    """Until every replica has its database (health is answered by whichever replica the queue picks)."""
    ready: set[str] = set()

    async def probe() -> set[str]:
        health = await bus.request(REGION_HEALTH, HealthQuery(), timeout=2)
        if health.database_reachable:
            ready.add(health.replica_id)
        return ready

    await eventually(probe, lambda seen: seen == replica_ids, timeout=20)


@pytest.fixture
async def region(nats_server: NatsServer, database_dsn: str, bus: Bus) -> AsyncIterator[Bus]:
    async with running_region(nats_server, database_dsn, "r1"):
        await wait_until_replicas_ready(bus, {"r1"})
        yield bus


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def subnet_request(cidr: str, fields: Mapping[str, object]) -> SubnetCreate:
    defaults: dict[str, object] = {
        "gateway": "10.20.0.1",
        "dns_servers": ["10.20.0.2"],
        "dynamic_start": "10.20.0.100",
        "dynamic_end": "10.20.0.199",
    }
    return SubnetCreate.model_validate({"cidr": cidr, **defaults, **fields})


async def create_subnet(bus: Bus, cidr: str = "10.20.0.0/24", **fields: object) -> Subnet:
    return await bus.request(SUBNET_CREATE, subnet_request(cidr, fields), timeout=5)


async def offer(bus: Bus, mac: str, *, rack: str = "rack-1", link: IPv4Address = LINK, **fields: str) -> Lease:
    request = LeaseOfferRequest.model_validate({"rack_id": rack, "mac": mac, "link_address": link, **fields})
    return (await bus.request(LEASE_OFFER, request, timeout=5)).lease


async def commit(bus: Bus, mac: str, address: IPv4Address, *, rack: str = "rack-1", key: str | None = None) -> Lease:
    request = LeaseCommitRequest(rack_id=rack, mac=mac, ip=address, hostname=None, idempotency_key=key)
    return await bus.request(LEASE_COMMIT, request, timeout=5)


async def offer_and_commit(bus: Bus, mac: str, *, rack: str = "rack-1", link: IPv4Address = LINK) -> Lease:
    offered = await offer(bus, mac, rack=rack, link=link)
    return await commit(bus, mac, offered.ip, rack=rack)


async def release(bus: Bus, mac: str, address: IPv4Address) -> Lease | None:
    request = LeaseReleaseRequest(rack_id="rack-1", mac=mac, ip=address)
    return (await bus.request(LEASE_RELEASE, request, timeout=5)).lease


async def lease_rows(db: asyncpg.Connection, mac: str) -> list[tuple[IPv4Address, str]]:
    rows = await db.fetch("SELECT ip, state FROM leases WHERE mac = $1::macaddr ORDER BY lease_id", mac)
    return [(row["ip"], row["state"]) for row in rows]


async def let_time_pass(db: asyncpg.Connection, mac: str) -> None:
    """The MAC's current lease runs out, as if its time had passed."""
    await db.execute(
        "UPDATE leases SET expires_at = now() - interval '1 second' "
        "WHERE mac = $1::macaddr AND state IN ('offered', 'bound', 'declined')",
        mac,
    )


async def published_lease_events(bus: Bus, subnet_id: int, count: int) -> list[LeaseEvent]:
    subscription = await bus.client.jetstream().subscribe(
        EVENT_LEASE.format(subnet_id=str(subnet_id)), stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    try:
        return [LeaseEvent.from_json_bytes((await subscription.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await subscription.unsubscribe()


def close_to(moment: datetime, expected: datetime) -> bool:
    return abs((moment - expected).total_seconds()) < 5


async def test_offer_commit_renew_release_round_trip_is_stored_and_published(
    region: Bus, db: asyncpg.Connection
) -> None:
    subnet = await create_subnet(region, lease_time_s=600)
    offered = await offer(region, MAC_A, hostname="node-a")
    now = datetime.now(UTC)
    assert (offered.ip, offered.state, offered.subnet_id) == (ip(100), LeaseState.OFFERED, subnet.subnet_id)
    assert close_to(offered.expires_at, now + timedelta(seconds=60))
    assert await lease_rows(db, MAC_A) == [(ip(100), "offered")]

    bound = await commit(region, MAC_A, offered.ip)
    assert (bound.ip, bound.state, bound.hostname) == (ip(100), LeaseState.BOUND, "node-a")
    assert close_to(bound.expires_at, now + timedelta(seconds=600))
    assert await lease_rows(db, MAC_A) == [(ip(100), "bound")]

    await asyncio.sleep(0.01)
    renewed = await region.request(LEASE_RENEW, LeaseCommitRequest(rack_id="rack-2", mac=MAC_A, ip=bound.ip), timeout=5)
    assert renewed.expires_at > bound.expires_at and renewed.rack_id == "rack-2"
    stored_expiry = await db.fetchval("SELECT expires_at FROM leases WHERE mac = $1::macaddr", MAC_A)
    assert stored_expiry == renewed.expires_at

    released = await release(region, MAC_A, bound.ip)
    assert released is not None and released.state is LeaseState.RELEASED
    assert await lease_rows(db, MAC_A) == [(ip(100), "released")]
    assert (await offer(region, MAC_B)).ip == ip(100), "a released address is free again"

    events = await published_lease_events(region, subnet.subnet_id, 5)
    assert [(e.lease.mac, e.lease.state) for e in events] == [
        (MAC_A, LeaseState.OFFERED),
        (MAC_A, LeaseState.BOUND),
        (MAC_A, LeaseState.BOUND),
        (MAC_A, LeaseState.RELEASED),
        (MAC_B, LeaseState.OFFERED),
    ]
    assert events[2].lease.expires_at == renewed.expires_at
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)


async def test_same_mac_gets_its_previous_address_back_after_release_and_after_expiry(
    region: Bus, db: asyncpg.Connection
) -> None:
    await create_subnet(region)
    first_b = await offer_and_commit(region, MAC_B)
    first_a = await offer_and_commit(region, MAC_A)
    assert (first_b.ip, first_a.ip) == (ip(100), ip(101))
    await release(region, MAC_B, first_b.ip)  # .100 is free and lower than A's address
    await release(region, MAC_A, first_a.ip)

    assert (await offer_and_commit(region, MAC_A)).ip == ip(101), "after release"

    await let_time_pass(db, MAC_A)
    assert (await offer(region, MAC_A)).ip == ip(101), "after expiry"
    assert await lease_rows(db, MAC_A) == [(ip(101), "released"), (ip(101), "expired"), (ip(101), "offered")]


async def test_an_active_offer_is_offered_again_and_held_longer(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    first = await offer(region, MAC_A)
    again = await offer(region, MAC_A, rack="rack-2", requested_ip="10.20.0.150")
    assert again.ip == first.ip and again.expires_at > first.expires_at
    assert await lease_rows(db, MAC_A) == [(ip(100), "offered")]


async def test_requested_address_is_honoured_only_when_free_and_dynamic(region: Bus) -> None:
    await create_subnet(region)
    assert (await offer(region, MAC_A, requested_ip="10.20.0.150")).ip == ip(150)
    assert (await offer(region, MAC_B, requested_ip="10.20.0.150")).ip == ip(100), "held by A"
    assert (await offer(region, MAC_C, requested_ip="10.20.0.50")).ip == ip(101), "outside the dynamic range"


async def test_reserved_gateway_and_dns_addresses_are_never_offered(region: Bus) -> None:
    await create_subnet(
        region,
        gateway="10.20.0.1",
        dns_servers=["10.20.0.2"],
        dynamic_start="10.20.0.1",
        dynamic_end="10.20.0.6",
        reserved=["10.20.0.3", "10.20.0.5"],
    )
    handed_out = [
        await offer(region, MAC_A, requested_ip="10.20.0.3"),
        await offer(region, MAC_B, requested_ip="10.20.0.1"),
    ]
    assert [lease.ip for lease in handed_out] == [ip(4), ip(6)]
    with pytest.raises(Conflict, match="exhausted"):
        await offer(region, MAC_C, requested_ip="10.20.0.2")
    with pytest.raises(Conflict):
        await commit(region, MAC_C, ip(5))


async def test_declined_address_is_quarantined_then_offered_again(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    bound = await offer_and_commit(region, MAC_A)
    ack = await region.request(LEASE_DECLINE, LeaseReleaseRequest(rack_id="rack-1", mac=MAC_A, ip=bound.ip))
    assert ack.lease is not None and ack.lease.state is LeaseState.DECLINED
    assert close_to(ack.lease.expires_at, datetime.now(UTC) + timedelta(minutes=10))
    assert await lease_rows(db, MAC_A) == [(ip(100), "declined")]

    assert (await offer(region, MAC_A)).ip == ip(101)
    assert (await offer(region, MAC_B, requested_ip="10.20.0.100")).ip == ip(102)
    with pytest.raises(Conflict, match="quarantined"):
        await commit(region, MAC_C, ip(100))

    await let_time_pass(db, MAC_A)  # the quarantine (and A's new offer) ran out
    assert (await offer(region, MAC_C)).ip == ip(100)
    assert await lease_rows(db, MAC_A) == [(ip(100), "expired"), (ip(101), "expired")]


async def test_commit_of_an_address_held_by_another_mac_is_a_conflict(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    held = await offer(region, MAC_A)
    with pytest.raises(Conflict, match="another client"):
        await commit(region, MAC_B, held.ip)
    assert await lease_rows(db, MAC_B) == []
    assert await lease_rows(db, MAC_A) == [(ip(100), "offered")]


async def test_commit_without_offer_binds_a_free_dynamic_address_only(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    await offer(region, MAC_A)  # A's offer of .100 is replaced when it asks for .120 (init-reboot)
    rebooted = await commit(region, MAC_A, ip(120))
    assert (rebooted.ip, rebooted.state) == (ip(120), LeaseState.BOUND)
    assert await lease_rows(db, MAC_A) == [(ip(100), "released"), (ip(120), "bound")]
    for outside in (ip(1), ip(50), ip(7, "10.99.0")):  # the gateway, a static address, no subnet at all
        with pytest.raises(Conflict):
            await commit(region, MAC_B, outside)


async def test_commit_with_an_idempotency_key_is_applied_once(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    offered = await offer(region, MAC_A)
    first = await commit(region, MAC_A, offered.ip, key="dhcp-xid-0001")
    repeat = await commit(region, MAC_A, offered.ip, key="dhcp-xid-0001")
    assert repeat == first
    bound_events = await db.fetchval("SELECT count(*) FROM events WHERE payload->'lease'->>'state' = 'bound'")
    assert bound_events == 1


async def test_renew_of_an_unknown_lease_is_not_found(region: Bus) -> None:
    await create_subnet(region)
    offered = await offer(region, MAC_A)
    for mac, address in ((MAC_A, offered.ip), (MAC_B, ip(150))):  # only offered, and never seen
        with pytest.raises(NotFound):
            await region.request(LEASE_RENEW, LeaseCommitRequest(rack_id="rack-1", mac=mac, ip=address))


async def test_release_of_an_unknown_lease_changes_nothing(region: Bus, db: asyncpg.Connection) -> None:
    await create_subnet(region)
    bound = await offer_and_commit(region, MAC_A)
    assert await release(region, MAC_B, bound.ip) is None
    assert await lease_rows(db, MAC_A) == [(ip(100), "bound")]


async def test_link_address_outside_every_subnet_is_not_found(region: Bus) -> None:
    await create_subnet(region)
    unmanaged: dict[str, object] = {
        "managed": False,
        "gateway": None,
        "dns_servers": [],
        "dynamic_start": None,
        "dynamic_end": None,
    }
    await create_subnet(region, "10.30.0.0/24", **unmanaged)
    for link in (IPv4Address("192.168.7.1"), IPv4Address("10.30.0.2")):  # nowhere, and an unmanaged subnet
        with pytest.raises(NotFound):
            await offer(region, MAC_A, link=link)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dynamic_start": "10.9.0.100", "dynamic_end": "10.9.0.120"}, "outside the host addresses"),
        ({"dynamic_start": "10.20.0.150", "dynamic_end": "10.20.0.100"}, "after its end"),
        ({"dynamic_start": "10.20.0.100", "dynamic_end": None}, "give both or neither"),
        ({"gateway": "10.21.0.1"}, "not a host address"),
        ({"reserved": ["10.21.0.9"]}, "outside 10.20.0.0/24"),
    ],
)
async def test_a_subnet_that_makes_no_sense_is_a_bad_request(
    region: Bus, db: asyncpg.Connection, fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(BadRequest, match=reason):
        await region.request(SUBNET_CREATE, subnet_request("10.20.0.0/24", fields))
    assert await db.fetchval("SELECT count(*) FROM subnets") == 0


async def test_a_subnet_equal_to_or_overlapping_another_is_a_conflict(region: Bus) -> None:
    created = await create_subnet(region, reserved=["10.20.0.10"])
    for cidr in ("10.20.0.0/24", "10.20.0.0/16"):
        with pytest.raises(Conflict, match="overlaps"):
            await create_subnet(region, cidr)
    listed = await region.request(SUBNET_LIST, SubnetListQuery())
    assert listed.subnets == [created]


async def announce_rack(bus: Bus, db: asyncpg.Connection, rack_id: str, interfaces: list[str]) -> None:
    announcement = RackServiceAnnouncement(
        rack_id=rack_id,
        service=RackServiceKind.DHCP,
        hostname=f"lab-{rack_id}",
        version="0.1.0",
        heartbeat_interval_s=30,
        interfaces=[IPv4Interface(interface) for interface in interfaces],
    )
    await bus.request(RACK_ANNOUNCE, announcement)
    await db.execute("UPDATE rack_services SET interfaces = $2::inet[] WHERE rack_id = $1", rack_id, interfaces)


async def test_snapshot_holds_the_racks_subnets_leases_and_reservations_only(
    region: Bus, db: asyncpg.Connection
) -> None:
    await announce_rack(region, db, "rack-a", ["10.20.0.2/24", "192.168.1.5/24"])
    await announce_rack(region, db, "rack-b", ["10.30.0.2/24"])
    mine = await create_subnet(region, reserved=["10.20.0.10", "10.20.0.11"])
    theirs = await create_subnet(
        region, "10.30.0.0/24", gateway="10.30.0.1", dynamic_start="10.30.0.100", dynamic_end="10.30.0.110"
    )
    bound = await offer_and_commit(region, MAC_A, rack="rack-a")
    offered = await offer(region, MAC_B, rack="rack-a")
    gone = await offer_and_commit(region, MAC_C, rack="rack-a")
    await release(region, MAC_C, gone.ip)
    await offer_and_commit(region, MAC_A, rack="rack-b", link=IPv4Address("10.30.0.2"))

    snapshot = await region.request(RACK_SNAPSHOT, RackSnapshotQuery(rack_id="rack-a"))
    assert snapshot.rack_id == "rack-a"
    assert snapshot.subnets == [mine]
    assert [(lease.mac, lease.ip, lease.state) for lease in snapshot.leases] == [
        (MAC_A, bound.ip, LeaseState.BOUND),
        (MAC_B, offered.ip, LeaseState.OFFERED),
    ]
    assert snapshot.reserved == {mine.subnet_id: [ip(10), ip(11)]}

    other = await region.request(RACK_SNAPSHOT, RackSnapshotQuery(rack_id="rack-b"))
    assert other.subnets == [theirs] and [lease.ip for lease in other.leases] == [ip(100, "10.30.0")]
    unknown = await region.request(RACK_SNAPSHOT, RackSnapshotQuery(rack_id="rack-z"))
    assert (unknown.subnets, unknown.leases, unknown.reserved) == ([], [], {})


async def test_two_replicas_and_two_racks_never_give_one_address_twice(
    nats_server: NatsServer, database_dsn: str, bus: Bus, db: asyncpg.Connection
) -> None:
    range_size, clients = 6, 20
    async with (
        running_region(nats_server, database_dsn, "r1"),
        running_region(nats_server, database_dsn, "r2"),
    ):
        await wait_until_replicas_ready(bus, {"r1", "r2"})
        await create_subnet(bus, dynamic_start="10.20.0.101", dynamic_end=f"10.20.0.{100 + range_size}")
        start = asyncio.Event()

        async def client(index: int) -> Lease:
            await start.wait()
            return await offer_and_commit(bus, f"52:54:00:00:01:{index:02x}", rack=f"rack-{index % 2 + 1}")

        tasks = [asyncio.create_task(client(index)) for index in range(clients)]
        start.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    committed = [outcome for outcome in outcomes if isinstance(outcome, Lease)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Lease)]
    assert len(committed) == range_size
    assert len({lease.ip for lease in committed}) == range_size
    assert all(isinstance(error, Conflict) and "exhausted" in error.message for error in refused), refused
    doubly_held = await db.fetch(
        "SELECT ip FROM leases WHERE state IN ('offered', 'bound', 'declined') GROUP BY ip HAVING count(*) > 1"
    )
    assert doubly_held == []
    rows = await db.fetch("SELECT ip, mac::text AS mac FROM leases WHERE state = 'bound'")
    assert {(row["ip"], row["mac"]) for row in rows} == {(lease.ip, lease.mac) for lease in committed}
    assert await db.fetchval("SELECT count(*) FROM leases WHERE state <> 'bound'") == 0
