"""Region replicas against real NATS and PostgreSQL: health, rack registration, a missing database."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv4Interface
from typing import Any, TypeVar

import asyncpg
import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.errors import Forbidden, Unavailable
from metalbus.contracts.health import HealthQuery, ReplicaRollCall
from metalbus.contracts.racks import (
    RackListQuery,
    RackServiceAnnouncement,
    RackServiceEvent,
    RackServiceHeartbeat,
    RackServiceKind,
)
from metalbus.db.migrate import target_level
from metalbus.subjects import (
    EVENTS_STREAM,
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    RACK_LIST,
    REGION_HEALTH,
    REGION_ROLL_CALL,
)
from metalbus_region.service import serve_region
from metalbus_region.settings import RegionSettings
from tests.conftest import NatsServer, free_port

T = TypeVar("T")

ANNOUNCEMENT = RackServiceAnnouncement(
    rack_id="rack-7",
    service=RackServiceKind.DHCP,
    hostname="lab-rack-7",
    version="0.1.0",
    heartbeat_interval_s=30,
    interfaces=[IPv4Interface("10.20.0.2/24"), IPv4Interface("10.0.0.2/24")],
)


@asynccontextmanager
async def running_region(nats: NatsServer, dsn: str, replica_id: str, **settings_: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    settings = RegionSettings(nats_url=nats.url, database_dsn=dsn, replica_id=replica_id, **settings_)
    task = asyncio.create_task(serve_region(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 10) -> T:
    """Retry ``probe`` until ``accept`` holds; Unavailable (region still connecting) counts as not yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        try:
            value = await probe()
        except Unavailable as error:
            last = error
        else:
            if accept(value):
                return value
            last = value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s; last outcome {last!r}")


async def test_two_replicas_migrate_at_once_and_report_healthy(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with (
        running_region(nats_server, database_dsn, "r1"),
        running_region(nats_server, database_dsn, "r2"),
    ):
        health = await eventually(
            lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), lambda h: h.database_reachable
        )
        assert health.migration_level == health.migration_target == target_level()
        assert health.replica_id in {"r1", "r2"}
        present = await bus.gather(REGION_ROLL_CALL, ReplicaRollCall(), window=0.3)
        assert sorted(p.replica_id for p in present) == ["r1", "r2"]
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == target_level()
    finally:
        await conn.close()


async def test_announced_rack_service_is_stored_listed_and_published(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with running_region(nats_server, database_dsn, "r1"):
        ack = await eventually(lambda: bus.request(RACK_ANNOUNCE, ANNOUNCEMENT, timeout=2), lambda a: True)
        assert ack.known and ack.service_token
        heartbeat = await bus.request(
            RACK_HEARTBEAT,
            RackServiceHeartbeat(rack_id="rack-7", service=RackServiceKind.DHCP, service_token=ack.service_token),
            timeout=2,
        )
        assert heartbeat.known
        racks = (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks
    assert [r.rack_id for r in racks] == ["rack-7"]
    [service] = racks[0].services
    assert (service.service, service.hostname, service.healthy) == (RackServiceKind.DHCP, "lab-rack-7", True)
    assert service.interfaces == [IPv4Interface("10.20.0.2/24"), IPv4Interface("10.0.0.2/24")]
    conn = await asyncpg.connect(database_dsn)
    try:
        row = await conn.fetchrow("SELECT hostname, heartbeat_interval_s FROM rack_services WHERE rack_id='rack-7'")
        assert (row["hostname"], row["heartbeat_interval_s"]) == ("lab-rack-7", 30)
    finally:
        await conn.close()
    subscription = await bus.client.jetstream().subscribe(
        "events.rack.rack-7", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    event = RackServiceEvent.from_json_bytes((await subscription.next_msg(timeout=2)).data)
    assert (event.rack_id, event.service, event.kind.value) == ("rack-7", RackServiceKind.DHCP, "announced")


async def test_heartbeat_from_an_unknown_rack_service_asks_it_to_announce(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with running_region(nats_server, database_dsn, "r1"):
        ack = await eventually(
            lambda: bus.request(
                RACK_HEARTBEAT,
                RackServiceHeartbeat(rack_id="rack-9", service=RackServiceKind.TFTP),
                timeout=2,
            ),
            lambda a: True,
        )
    assert ack.known is False


async def test_without_postgresql_the_region_answers_with_typed_unavailable(nats_server: NatsServer, bus: Bus) -> None:
    nowhere = f"postgresql://metalbus:x@127.0.0.1:{free_port()}/metalbus"
    async with running_region(nats_server, nowhere, "lonely"):
        health = await eventually(lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), lambda h: True)
        assert health.database_reachable is False
        assert health.migration_level is None
        with pytest.raises(Unavailable) as caught:
            await bus.request(RACK_LIST, RackListQuery(), timeout=2)
        assert caught.value.retryable
        present = await bus.gather(REGION_ROLL_CALL, ReplicaRollCall(), window=0.2)
        assert [p.replica_id for p in present] == ["lonely"]


async def test_a_region_with_a_rack_secret_refuses_racks_without_it(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with running_region(nats_server, database_dsn, "r1", rack_shared_secret="the-lab-secret"):
        await eventually(lambda: bus.request(RACK_LIST, RackListQuery(), timeout=2), lambda r: True)
        for presented in (None, "a-guess"):
            with pytest.raises(Forbidden, match="did not present the region's rack secret"):
                await bus.request(RACK_ANNOUNCE, ANNOUNCEMENT.model_copy(update={"shared_secret": presented}))
        assert (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks == []
        welcome = ANNOUNCEMENT.model_copy(update={"shared_secret": "the-lab-secret"})
        assert (await bus.request(RACK_ANNOUNCE, welcome, timeout=2)).known
        assert [r.rack_id for r in (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks] == ["rack-7"]


async def test_a_rack_service_not_heard_from_within_three_intervals_is_unhealthy(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with running_region(nats_server, database_dsn, "r1"):
        await eventually(lambda: bus.request(RACK_ANNOUNCE, ANNOUNCEMENT, timeout=2), lambda a: True)
        conn = await asyncpg.connect(database_dsn)
        try:
            # heartbeat_interval_s is 30: 89 s of silence is still healthy, 91 s is not.
            await conn.execute("UPDATE rack_services SET last_seen = now() - interval '89 seconds'")
            assert (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks[0].services[0].healthy
            await conn.execute("UPDATE rack_services SET last_seen = now() - interval '91 seconds'")
            assert not (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks[0].services[0].healthy
        finally:
            await conn.close()


async def test_a_heartbeat_without_the_identity_issued_at_announce_is_not_taken(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with running_region(nats_server, database_dsn, "r1"):
        ack = await eventually(lambda: bus.request(RACK_ANNOUNCE, ANNOUNCEMENT, timeout=2), lambda a: True)
        conn = await asyncpg.connect(database_dsn)
        try:
            await conn.execute("UPDATE rack_services SET last_seen = now() - interval '1 hour'")
            for forged in (None, "guessed-token", ack.service_token + "x"):
                heartbeat = RackServiceHeartbeat(rack_id="rack-7", service=RackServiceKind.DHCP, service_token=forged)
                assert not (await bus.request(RACK_HEARTBEAT, heartbeat, timeout=2)).known
            stale = await conn.fetchval("SELECT now() - last_seen > interval '59 minutes' FROM rack_services")
            assert stale, "a forged heartbeat keeps nothing alive"
            again = await bus.request(RACK_ANNOUNCE, ANNOUNCEMENT, timeout=2)
            assert again.service_token != ack.service_token, "a new announce gets a new identity"
            heartbeat = RackServiceHeartbeat(
                rack_id="rack-7", service=RackServiceKind.DHCP, service_token=again.service_token
            )
            assert (await bus.request(RACK_HEARTBEAT, heartbeat, timeout=2)).known
        finally:
            await conn.close()
