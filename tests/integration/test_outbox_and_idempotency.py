"""Events are committed with their change and reach JetStream once; keyed commands are applied once."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import asyncpg
import nats.errors
import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.errors import Conflict
from metalbus.contracts.racks import RackServiceAck, RackServiceEvent, RackServiceEventKind, RackServiceKind
from metalbus.db.migrate import migrate_dsn
from metalbus.subjects import EVENT_RACK_SERVICE, EVENTS_STREAM
from metalbus_region.database import Database
from metalbus_region.idempotency import apply_once
from metalbus_region.outbox import OutboxPublisher, record_event
from tests.conftest import NatsServer


@pytest.fixture
async def database(database_dsn: str) -> AsyncIterator[Database]:
    await migrate_dsn(database_dsn)
    db = Database(database_dsn, pool_max=10, timeout_s=5)
    await db.connect_and_migrate()
    try:
        yield db
    finally:
        await db.close()


def announced(rack_id: str) -> Callable[[int, datetime], RackServiceEvent]:
    return lambda sequence, at: RackServiceEvent(
        kind=RackServiceEventKind.ANNOUNCED, rack_id=rack_id, service=RackServiceKind.DHCP, hostname="h", at=at
    )


async def stream_subjects(bus: Bus, expected: int) -> list[tuple[str, int]]:
    subscription = await bus.client.jetstream().subscribe(
        "events.>", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    received = []
    for _ in range(expected):
        message = await subscription.next_msg(timeout=5)
        received.append((message.subject, message.metadata.sequence.stream))
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.next_msg(timeout=0.5)  # nothing more: no duplicates
    await subscription.unsubscribe()
    return received


async def test_an_event_of_a_rolled_back_change_is_never_published(database: Database, bus: Bus) -> None:
    await bus.ensure_streams()
    async with database.connection() as conn:
        with pytest.raises(RuntimeError, match="change failed"):
            async with conn.transaction():
                await record_event(conn, EVENT_RACK_SERVICE, announced("rack-lost"), rack_id="rack-lost")
                raise RuntimeError("change failed")
        async with conn.transaction():
            await record_event(conn, EVENT_RACK_SERVICE, announced("rack-kept"), rack_id="rack-kept")
    publisher = OutboxPublisher(database, bus)
    assert await publisher.publish_pending() == 1
    assert await publisher.publish_pending() == 0
    assert [subject for subject, _ in await stream_subjects(bus, 1)] == ["events.rack.rack-kept"]


async def test_published_events_older_than_the_retention_are_pruned_and_unpublished_ones_never(
    database: Database, bus: Bus
) -> None:
    await bus.ensure_streams()
    async with database.connection() as conn, conn.transaction():
        for rack in ("rack-old-1", "rack-old-2", "rack-recent"):
            await record_event(conn, EVENT_RACK_SERVICE, announced(rack), rack_id=rack)
    publisher = OutboxPublisher(database, bus, retention_s=3600)
    assert await publisher.publish_pending() == 3
    async with database.connection() as conn:
        await record_event(conn, EVENT_RACK_SERVICE, announced("rack-unpublished"), rack_id="rack-unpublished")
        await conn.execute(
            "UPDATE events SET published_at = now() - interval '2 hours', created_at = now() - interval '2 hours' "
            "WHERE subject IN ('events.rack.rack-old-1', 'events.rack.rack-old-2', 'events.rack.rack-unpublished')"
        )
        await conn.execute("UPDATE events SET published_at = NULL WHERE subject = 'events.rack.rack-unpublished'")

        pruned = await publisher.prune()
        left = [row["subject"] for row in await conn.fetch("SELECT subject FROM events ORDER BY sequence")]

    assert pruned == 2
    assert left == ["events.rack.rack-recent", "events.rack.rack-unpublished"]
    assert len(await stream_subjects(bus, 3)) == 3  # the stream still holds what was pruned from the table


async def test_events_are_published_in_sequence_order_and_once_despite_competing_publishers(
    database: Database, nats_server: NatsServer
) -> None:
    buses = [await Bus.connect(nats_server.options(f"replica-{i}")) for i in range(2)]
    await buses[0].ensure_streams()
    async with database.connection() as conn:
        for index in range(30):
            async with conn.transaction():
                await record_event(conn, EVENT_RACK_SERVICE, announced(f"rack-{index}"), rack_id=f"rack-{index}")
    publishers = [OutboxPublisher(database, bus, batch=7) for bus in buses]
    try:
        for _ in range(10):
            await asyncio.gather(*(publisher.publish_pending() for publisher in publishers))
        assert sum(publisher.published for publisher in publishers) == 30
        received = await stream_subjects(buses[0], 30)
        assert sorted(subject for subject, _ in received) == sorted(f"events.rack.rack-{i}" for i in range(30))
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NULL") == 0
    finally:
        for bus in buses:
            await bus.drain()


async def test_a_republished_event_is_dropped_by_the_stream(database: Database, bus: Bus) -> None:
    """A replica killed after publishing but before marking the row leaves it for another to publish again."""
    await bus.ensure_streams()
    async with database.connection() as conn, conn.transaction():
        await record_event(conn, EVENT_RACK_SERVICE, announced("rack-twice"), rack_id="rack-twice")
    publisher = OutboxPublisher(database, bus)
    assert await publisher.publish_pending() == 1
    async with database.connection() as conn:
        await conn.execute("UPDATE events SET published_at = NULL")
    assert await publisher.publish_pending() == 1
    assert [subject for subject, _ in await stream_subjects(bus, 1)] == ["events.rack.rack-twice"]


async def test_a_keyed_command_is_applied_once_even_when_repeated_concurrently(
    database: Database, database_dsn: str
) -> None:
    applied = 0

    async def apply(conn: asyncpg.Connection) -> RackServiceAck:
        nonlocal applied
        applied += 1
        await conn.execute("INSERT INTO racks (rack_id) VALUES ('rack-once')")
        await asyncio.sleep(0.2)  # the repeats arrive while this one is still in its transaction
        return RackServiceAck(known=True)

    async def attempt() -> RackServiceAck:
        async with database.connection() as conn:
            return await apply_once(conn, "key-00000001", "test.subject", RackServiceAck, apply)

    replies = await asyncio.gather(*(attempt() for _ in range(5)))
    assert replies == [RackServiceAck(known=True)] * 5
    assert applied == 1
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM racks WHERE rack_id = 'rack-once'") == 1
    finally:
        await conn.close()


async def test_a_failed_keyed_command_can_be_retried_and_a_key_cannot_change_command(database: Database) -> None:
    async def failing(conn: asyncpg.Connection) -> RackServiceAck:
        await conn.execute("INSERT INTO racks (rack_id) VALUES ('rack-retry')")
        raise Conflict("not this time")

    async def succeeding(conn: asyncpg.Connection) -> RackServiceAck:
        await conn.execute("INSERT INTO racks (rack_id) VALUES ('rack-retry')")
        return RackServiceAck(known=False)

    async with database.connection() as conn:
        with pytest.raises(Conflict):
            await apply_once(conn, "key-00000002", "test.subject", RackServiceAck, failing)
        assert await apply_once(conn, "key-00000002", "test.subject", RackServiceAck, succeeding) == RackServiceAck(
            known=False
        )
        with pytest.raises(Conflict, match=r"was used for test\.subject"):
            await apply_once(conn, "key-00000002", "other.subject", RackServiceAck, succeeding)
