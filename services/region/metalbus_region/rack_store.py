"""What the region keeps about racks in PostgreSQL: announcements, heartbeats, and the list (with the subnets each
service serves)."""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Interface

from metalbus.contracts.racks import (
    RackServiceAnnouncement,
    RackServiceHeartbeat,
    RackServiceKind,
    RackServiceStatus,
    RackStatus,
)
from metalbus.db.pool import DbConnection
from metalbus_region.subnet_store import serves_subnet

# A service is healthy while it was heard from within this many of its own heartbeat intervals.
HEALTHY_WITHIN_INTERVALS = 3


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def record_announcement(
    conn: DbConnection, announcement: RackServiceAnnouncement, service_token: str
) -> datetime:
    """Upsert the rack and its service with the identity just issued to it; returns the database's time."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO racks (rack_id) VALUES ($1) ON CONFLICT (rack_id) DO NOTHING", announcement.rack_id
        )
        recorded: datetime = await conn.fetchval(
            """
            INSERT INTO rack_services (rack_id, service, hostname, version, heartbeat_interval_s, interfaces,
                                       token_sha256)
            VALUES ($1, $2, $3, $4, $5, $6::inet[], $7)
            ON CONFLICT (rack_id, service) DO UPDATE
               SET hostname = excluded.hostname, version = excluded.version,
                   heartbeat_interval_s = excluded.heartbeat_interval_s, interfaces = excluded.interfaces,
                   token_sha256 = excluded.token_sha256, last_seen = now()
            RETURNING last_seen
            """,
            announcement.rack_id,
            announcement.service.value,
            announcement.hostname,
            announcement.version,
            announcement.heartbeat_interval_s,
            [str(interface) for interface in announcement.interfaces],
            token_digest(service_token),
        )
    return recorded


@dataclass(frozen=True)
class HeartbeatRecorded:
    known: bool
    """False if the region does not know this rack service or the heartbeat does not carry the identity its
    announce was given (then it must announce itself again, with the shared secret)."""
    returned_hostname: str | None = None
    """The service's hostname when this heartbeat ended a lapse (it had counted as unhealthy); else None."""


async def record_heartbeat(conn: DbConnection, heartbeat: RackServiceHeartbeat) -> HeartbeatRecorded:
    """Touch last_seen, and say whether the service had lapsed before this heartbeat."""
    row = await conn.fetchrow(
        f"""
        UPDATE rack_services AS rs SET last_seen = now()
          FROM (SELECT rack_id, service, last_seen FROM rack_services
                 WHERE rack_id = $1 AND service = $2 AND token_sha256 = $3 FOR UPDATE) AS before
         WHERE rs.rack_id = before.rack_id AND rs.service = before.service
        RETURNING rs.hostname,
                  now() - before.last_seen > make_interval(secs => rs.heartbeat_interval_s * {HEALTHY_WITHIN_INTERVALS})
                      AS lapsed
        """,
        heartbeat.rack_id,
        heartbeat.service.value,
        token_digest(heartbeat.service_token or ""),
    )
    if row is None:
        return HeartbeatRecorded(known=False)
    return HeartbeatRecorded(known=True, returned_hostname=str(row["hostname"]) if row["lapsed"] else None)


async def list_racks(conn: DbConnection) -> list[RackStatus]:
    rows = await conn.fetch(
        f"""
        SELECT rs.rack_id, rs.service, rs.hostname, rs.version, rs.first_seen, rs.last_seen,
               rs.interfaces::text[] AS interfaces,
               now() - rs.last_seen <= make_interval(secs => rs.heartbeat_interval_s * $1) AS healthy,
               ARRAY(SELECT s.subnet_id FROM subnets s WHERE {serves_subnet("rs", "s")} ORDER BY s.subnet_id)
                   AS served_subnet_ids
          FROM rack_services rs
         ORDER BY rs.rack_id, rs.service
        """,
        HEALTHY_WITHIN_INTERVALS,
    )
    racks: dict[str, list[RackServiceStatus]] = {}
    for row in rows:
        racks.setdefault(row["rack_id"], []).append(
            RackServiceStatus(
                service=RackServiceKind(row["service"]),
                hostname=row["hostname"],
                version=row["version"],
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                healthy=row["healthy"],
                interfaces=[IPv4Interface(text) for text in row["interfaces"]],
                served_subnet_ids=list(row["served_subnet_ids"]),
            )
        )
    return [RackStatus(rack_id=rack_id, services=services) for rack_id, services in racks.items()]
