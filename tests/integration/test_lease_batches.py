"""Batched offers and commits (region.leases.offer.batch / commit.batch) answer as lone requests would, against a
real region, PostgreSQL and NATS."""

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address

import asyncpg

from metalbus.bus import Bus
from metalbus.contracts.errors import ErrorCode
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitBatch,
    LeaseCommitRequest,
    LeaseOfferBatch,
    LeaseOfferRequest,
    LeaseOutcome,
    LeaseState,
)
from metalbus.subjects import LEASE_COMMIT_BATCH, LEASE_OFFER_BATCH
from tests.conftest import NatsServer
from tests.integration.test_leases import (
    LINK,
    create_subnet,
    db,  # noqa: F401  (fixture)
    ip,
    offer,
    offer_and_commit,
    published_lease_events,
    region,  # noqa: F401  (fixture)
    wait_until_replicas_ready,
)
from tests.integration.test_region import running_region


def mac(index: int) -> str:
    return f"52:54:00:00:{index // 256:02x}:{index % 256:02x}"


def offer_request(mac_address: str, *, rack: str = "rack-1", link: IPv4Address = LINK) -> LeaseOfferRequest:
    return LeaseOfferRequest(rack_id=rack, mac=mac_address, link_address=link)


def commit_request(mac_address: str, address: IPv4Address, *, rack: str = "rack-1") -> LeaseCommitRequest:
    return LeaseCommitRequest(rack_id=rack, mac=mac_address, ip=address)


async def offer_batch(bus: Bus, requests: Sequence[LeaseOfferRequest]) -> list[LeaseOutcome]:
    reply = await bus.request(LEASE_OFFER_BATCH, LeaseOfferBatch(requests=list(requests)), timeout=10)
    return reply.outcomes


async def commit_batch(bus: Bus, requests: Sequence[LeaseCommitRequest]) -> list[LeaseOutcome]:
    reply = await bus.request(LEASE_COMMIT_BATCH, LeaseCommitBatch(requests=list(requests)), timeout=10)
    return reply.outcomes


def leases_of(outcomes: Sequence[LeaseOutcome]) -> list[Lease]:
    assert all(outcome.error is None and outcome.lease is not None for outcome in outcomes), outcomes
    return [outcome.lease for outcome in outcomes if outcome.lease is not None]


async def test_a_batch_of_offers_gets_the_lowest_free_addresses_in_request_order(
    region: Bus,  # noqa: F811
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    subnet = await create_subnet(region)
    reply = await region.request(
        LEASE_OFFER_BATCH, LeaseOfferBatch(requests=[offer_request(mac(i)) for i in range(5)]), timeout=10
    )

    offers = leases_of(reply.outcomes)
    assert [lease.mac for lease in offers] == [mac(i) for i in range(5)]
    assert [lease.ip for lease in offers] == [ip(100 + i) for i in range(5)]
    assert {lease.state for lease in offers} == {LeaseState.OFFERED}
    assert [s.subnet_id for s in reply.subnets] == [subnet.subnet_id]
    rows = await db.fetch("SELECT ip, mac::text AS mac FROM leases WHERE state = 'offered' ORDER BY ip")
    assert [(row["ip"], row["mac"]) for row in rows] == [(lease.ip, lease.mac) for lease in offers]


async def test_a_batched_offer_is_what_a_lone_offer_would_answer(region: Bus) -> None:  # noqa: F811
    await create_subnet(region)
    bound = await offer_and_commit(region, mac(1))
    offered = await offer(region, mac(2))

    again = leases_of(await offer_batch(region, [offer_request(mac(1)), offer_request(mac(2))]))

    assert (again[0].ip, again[0].state) == (bound.ip, LeaseState.BOUND)
    assert (again[1].ip, again[1].state) == (offered.ip, LeaseState.OFFERED)
    assert again[1].expires_at >= offered.expires_at


async def test_a_client_retransmitting_within_one_batch_is_offered_one_address(
    region: Bus,  # noqa: F811
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await create_subnet(region)

    offers = leases_of(await offer_batch(region, [offer_request(mac(1)), offer_request(mac(1))]))

    assert offers[0] == offers[1]
    assert await db.fetchval("SELECT count(*) FROM leases") == 1


async def test_a_batch_larger_than_the_pool_gets_typed_exhausted_errors_for_the_rest(region: Bus) -> None:  # noqa: F811
    await create_subnet(region, dynamic_start="10.20.0.100", dynamic_end="10.20.0.102")

    outcomes = await offer_batch(region, [offer_request(mac(i)) for i in range(5)])

    assert [outcome.lease.ip for outcome in outcomes[:3] if outcome.lease] == [ip(100), ip(101), ip(102)]
    assert [(o.error.code, "exhausted" in o.error.message) for o in outcomes[3:] if o.error] == [
        (ErrorCode.CONFLICT, True),
        (ErrorCode.CONFLICT, True),
    ]


async def test_an_offer_for_an_unmanaged_link_fails_alone(region: Bus) -> None:  # noqa: F811
    await create_subnet(region)

    outcomes = await offer_batch(region, [offer_request(mac(1), link=IPv4Address("192.0.2.1")), offer_request(mac(2))])

    assert outcomes[0].error is not None and outcomes[0].error.code is ErrorCode.NOT_FOUND
    assert outcomes[1].lease is not None and outcomes[1].lease.ip == ip(100)


async def test_a_batch_of_commits_binds_offers_and_naks_only_the_requests_a_lone_commit_would(
    region: Bus,  # noqa: F811
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    subnet = await create_subnet(region)
    offers = leases_of(await offer_batch(region, [offer_request(mac(i)) for i in range(3)]))

    outcomes = await commit_batch(
        region,
        [
            *(commit_request(lease.mac, lease.ip) for lease in offers),
            commit_request(mac(9), offers[0].ip),  # held by mac(0): NAK
            commit_request(mac(10), ip(150)),  # init-reboot onto a free dynamic address: bound
            commit_request(mac(11), ip(50)),  # not dynamic: NAK
        ],
    )

    bound = leases_of(outcomes[:3])
    assert [(lease.mac, lease.ip, lease.state) for lease in bound] == [
        (lease.mac, lease.ip, LeaseState.BOUND) for lease in offers
    ]
    assert outcomes[3].error is not None and outcomes[3].error.code is ErrorCode.CONFLICT
    assert outcomes[4].lease is not None and (outcomes[4].lease.ip, outcomes[4].lease.state) == (
        ip(150),
        LeaseState.BOUND,
    )
    assert outcomes[5].error is not None and outcomes[5].error.code is ErrorCode.CONFLICT
    rows = await db.fetch("SELECT ip, mac::text AS mac FROM leases WHERE state = 'bound' ORDER BY ip")
    assert [(row["ip"], row["mac"]) for row in rows] == [
        *((lease.ip, lease.mac) for lease in offers),
        (ip(150), mac(10)),
    ]
    events = await published_lease_events(region, subnet.subnet_id, 7)  # 3 offers, 4 bindings
    assert [event.lease.state for event in events].count(LeaseState.BOUND) == 4


async def test_two_replicas_and_two_racks_batching_never_give_one_address_twice(
    nats_server: NatsServer,
    database_dsn: str,
    bus: Bus,
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    range_size, clients = 40, 60
    async with (
        running_region(nats_server, database_dsn, "r1"),
        running_region(nats_server, database_dsn, "r2"),
    ):
        await wait_until_replicas_ready(bus, {"r1", "r2"})
        await create_subnet(region_bus := bus, dynamic_start="10.20.0.101", dynamic_end=f"10.20.0.{100 + range_size}")

        async def rack(rack_id: str, first: int) -> list[LeaseOutcome]:
            """Both racks hear every client (a broadcast DISCOVER), in batches of 10 and in another order."""
            order = list(range(clients)) if first == 0 else list(reversed(range(clients)))
            outcomes: list[LeaseOutcome] = []
            for start in range(0, clients, 10):
                chunk = [offer_request(mac(i), rack=rack_id) for i in order[start : start + 10]]
                offered = await offer_batch(region_bus, chunk)
                commits = [commit_request(o.lease.mac, o.lease.ip, rack=rack_id) for o in offered if o.lease]
                outcomes += await commit_batch(region_bus, commits) if commits else []
            return outcomes

        results = await asyncio.gather(rack("rack-1", 0), rack("rack-2", 1))

    doubly_held = await db.fetch(
        "SELECT ip FROM leases WHERE state IN ('offered', 'bound', 'declined') GROUP BY ip HAVING count(*) > 1"
    )
    assert doubly_held == []
    two_active = await db.fetch(
        "SELECT mac FROM leases WHERE state IN ('offered', 'bound') GROUP BY mac HAVING count(*) > 1"
    )
    assert two_active == []
    bound = await db.fetch("SELECT ip, mac::text AS mac FROM leases WHERE state = 'bound'")
    assert len(bound) == range_size
    acked = {(o.lease.ip, o.lease.mac) for outcomes in results for o in outcomes if o.lease is not None}
    assert acked == {(row["ip"], row["mac"]) for row in bound}
