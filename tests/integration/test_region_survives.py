"""The region outlives its database and its racks outlive the region's memory: both recover by themselves."""

import asyncio
import shutil
from collections.abc import Iterator

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import Unavailable
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.racks import RackListQuery, RackServiceKind
from metalbus.db.migrate import target_level
from metalbus.rack_presence import RackServiceSettings, keep_present
from metalbus.stack.postgres import PostgresCluster
from metalbus.subjects import RACK_LIST, REGION_HEALTH
from tests.conftest import NatsServer, free_port, world_readable_temp_dir
from tests.integration.test_region import eventually, running_region


@pytest.fixture
def private_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, initialised but not started: the test starts and stops it."""
    root = world_readable_temp_dir("metalbus-test-pg-private-")
    cluster = PostgresCluster(root=root / "cluster", port=free_port())
    cluster.initialise()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def start(cluster: PostgresCluster) -> None:
    cluster.start()
    await cluster.wait_ready()


async def test_region_started_before_postgresql_connects_migrates_and_survives_a_restart(
    nats_server: NatsServer, private_cluster: PostgresCluster, bus: Bus
) -> None:
    async with running_region(nats_server, private_cluster.dsn(), "patient"):
        health = await eventually(lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), lambda h: True)
        assert health.database_reachable is False

        await start(private_cluster)
        health = await eventually(
            lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2),
            lambda h: h.database_reachable,
            timeout=20,
        )
        assert health.migration_level == target_level()
        assert (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks == []

        assert private_cluster.stop()
        with pytest.raises(Unavailable) as caught:
            await bus.request(RACK_LIST, RackListQuery(), timeout=3)
        assert caught.value.retryable

        await start(private_cluster)
        racks = await eventually(lambda: bus.request(RACK_LIST, RackListQuery(), timeout=3), lambda r: True)
        assert racks.racks == []


async def test_a_rack_service_forgotten_by_the_region_announces_itself_again(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    stop = asyncio.Event()
    settings = RackServiceSettings(nats_url=nats_server.url, rack_id="rack-5", heartbeat_interval_s=0.2)

    async def listed() -> list[str]:
        racks = (await bus.request(RACK_LIST, RackListQuery(), timeout=2)).racks
        return [f"{rack.rack_id}/{service.service.value}" for rack in racks for service in rack.services]

    async with running_region(nats_server, database_dsn, "r1"):
        presence = asyncio.create_task(keep_present(bus, RackServiceKind.TFTP, settings, stop))
        try:
            assert await eventually(listed, lambda names: names == ["rack-5/rack-tftp"]) == ["rack-5/rack-tftp"]
            conn = await asyncpg.connect(database_dsn)
            try:
                assert await conn.execute("DELETE FROM racks WHERE rack_id = 'rack-5'") == "DELETE 1"
            finally:
                await conn.close()
            assert await listed() == []
            assert await eventually(listed, lambda names: names == ["rack-5/rack-tftp"]) == ["rack-5/rack-tftp"]
        finally:
            stop.set()
            await presence
