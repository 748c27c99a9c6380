"""The region's answers to region.* subjects: pure functions of the request and the database."""

from collections.abc import Callable
from datetime import UTC, datetime

from metalbus import __version__
from metalbus.bus import Bus
from metalbus.contracts.health import HealthQuery, RegionHealth, ReplicaPresent, ReplicaRollCall
from metalbus.contracts.racks import (
    RackList,
    RackListQuery,
    RackServiceAck,
    RackServiceAnnouncement,
    RackServiceEvent,
    RackServiceEventKind,
    RackServiceHeartbeat,
)
from metalbus.db.migrate import target_level
from metalbus.subjects import EVENT_RACK_SERVICE
from metalbus_region import rack_store
from metalbus_region.database import Database


class RegionHandlers:
    def __init__(
        self,
        *,
        replica_id: str,
        database: Database,
        bus: Bus,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.replica_id = replica_id
        self.database = database
        self.bus = bus
        self.clock = clock
        self.started_at = clock()
        self.migration_target = target_level()

    async def health(self, _: HealthQuery) -> RegionHealth:
        reachable, level, error = await self.database.probe()
        return RegionHealth(
            replica_id=self.replica_id,
            version=__version__,
            database_reachable=reachable,
            database_error=error,
            migration_level=level,
            migration_target=self.migration_target,
            started_at=self.started_at,
        )

    async def roll_call(self, _: ReplicaRollCall) -> ReplicaPresent:
        return ReplicaPresent(replica_id=self.replica_id, version=__version__, started_at=self.started_at)

    async def announce(self, announcement: RackServiceAnnouncement) -> RackServiceAck:
        async with self.database.connection() as conn:
            recorded = await rack_store.record_announcement(conn, announcement)
        await self.bus.publish_event(
            EVENT_RACK_SERVICE,
            RackServiceEvent(
                kind=RackServiceEventKind.ANNOUNCED,
                rack_id=announcement.rack_id,
                service=announcement.service,
                hostname=announcement.hostname,
                at=recorded,
            ),
            rack_id=announcement.rack_id,
        )
        return RackServiceAck(known=True)

    async def heartbeat(self, heartbeat: RackServiceHeartbeat) -> RackServiceAck:
        async with self.database.connection() as conn:
            return RackServiceAck(known=await rack_store.record_heartbeat(conn, heartbeat))

    async def list_racks(self, _: RackListQuery) -> RackList:
        async with self.database.connection() as conn:
            return RackList(racks=await rack_store.list_racks(conn))
