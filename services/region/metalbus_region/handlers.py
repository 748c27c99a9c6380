"""The region's answers about itself and its racks: health, roll call, rack announce/heartbeat/list."""

import hmac
import secrets

from metalbus import __version__
from metalbus.contracts.errors import Forbidden
from metalbus.contracts.health import HealthQuery, RegionHealth, ReplicaPresent, ReplicaRollCall
from metalbus.contracts.racks import (
    RackList,
    RackListQuery,
    RackServiceAck,
    RackServiceAnnouncement,
    RackServiceEvent,
    RackServiceEventKind,
    RackServiceHeartbeat,
    RackServiceKind,
)
from metalbus.db.migrate import target_level
from metalbus.db.pool import DbConnection
from metalbus.subjects import (
    EVENT_RACK_SERVICE,
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    RACK_LIST,
    REGION_HEALTH,
    REGION_ROLL_CALL,
)
from metalbus_region import rack_store
from metalbus_region.context import RegionContext, Route
from metalbus_region.outbox import record_event


class RegionHandlers:
    def __init__(self, ctx: RegionContext) -> None:
        self.replica_id = ctx.settings.replica_id
        self.database = ctx.database
        self.outbox = ctx.outbox
        self.started_at = ctx.clock()
        self.migration_target = target_level()
        self.rack_secret = ctx.settings.rack_shared_secret

    def routes(self) -> list[Route]:
        return [
            (REGION_HEALTH, self.health),
            (REGION_ROLL_CALL, self.roll_call),
            (RACK_ANNOUNCE, self.announce),
            (RACK_HEARTBEAT, self.heartbeat),
            (RACK_LIST, self.list_racks),
        ]

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
        if self.rack_secret is not None and not hmac.compare_digest(
            (announcement.shared_secret or "").encode(), self.rack_secret.encode()
        ):
            raise Forbidden(f"rack {announcement.rack_id} did not present the region's rack secret")
        async with self.database.connection() as conn, conn.transaction():
            service_token = secrets.token_urlsafe(24)
            await rack_store.record_announcement(conn, announcement, service_token)
            await record_rack_event(
                conn, RackServiceEventKind.ANNOUNCED, announcement.rack_id, announcement.service, announcement.hostname
            )
        self.outbox.wake()
        return RackServiceAck(known=True, service_token=service_token)

    async def heartbeat(self, heartbeat: RackServiceHeartbeat) -> RackServiceAck:
        async with self.database.connection() as conn, conn.transaction():
            recorded = await rack_store.record_heartbeat(conn, heartbeat)
            if recorded.returned_hostname is not None:  # it counted as unhealthy: those following racks must hear
                await record_rack_event(
                    conn,
                    RackServiceEventKind.RETURNED,
                    heartbeat.rack_id,
                    heartbeat.service,
                    recorded.returned_hostname,
                )
        if recorded.returned_hostname is not None:
            self.outbox.wake()
        return RackServiceAck(known=recorded.known)

    async def list_racks(self, _: RackListQuery) -> RackList:
        async with self.database.connection() as conn:
            return RackList(racks=await rack_store.list_racks(conn))


async def record_rack_event(
    conn: DbConnection, kind: RackServiceEventKind, rack_id: str, service: RackServiceKind, hostname: str
) -> None:
    """A rack service event into the outbox, inside the caller's transaction."""
    await record_event(
        conn,
        EVENT_RACK_SERVICE,
        lambda _, at: RackServiceEvent(kind=kind, rack_id=rack_id, service=service, hostname=hostname, at=at),
        rack_id=rack_id,
    )
