"""The internal DNS zone a rack-proxy serves, built from PostgreSQL: subnet names, hostnames, serial."""

import re
from ipaddress import IPv4Address, IPv4Network

import structlog

from metalbus.contracts.dns import (
    DEFAULT_INTERNAL_DOMAIN,
    DNS_NAME_PATTERN,
    DnsZone,
    DnsZoneQuery,
    HostRecord,
    SubnetName,
)
from metalbus.contracts.racks import RackServiceKind
from metalbus.db.pool import DbConnection
from metalbus.subjects import DNS_ZONE
from metalbus_region.context import RegionContext, Route
from metalbus_region.rack_store import HEALTHY_WITHIN_INTERVALS

log = structlog.get_logger("metalbus.region.dns")

_VALID_NAME = re.compile(DNS_NAME_PATTERN)

# Every healthy rack-proxy address inside each managed subnet: the racks a machine on it may use.
_SUBNET_RACKS = """
SELECT s.cidr,
       ARRAY(SELECT DISTINCT host(interface.address)::inet
               FROM rack_services rs, unnest(rs.interfaces) AS interface (address)
              WHERE rs.service = $1
                AND now() - rs.last_seen <= make_interval(secs => rs.heartbeat_interval_s * $2)
                AND s.cidr >>= host(interface.address)::inet
              ORDER BY 1) AS rack_addresses
  FROM subnets s
 WHERE s.managed
 ORDER BY s.cidr
"""

# Each machine's bound, unexpired lease: its boot MAC's first, then any other interface's, newest first. Two plain
# joins in a UNION ALL, not one join on "boot MAC or any interface MAC": that OR cannot be hashed, and with a
# thousand machines and leases the nested loop it forces took ≈ 230 ms a query (bench/fleet.py --pg-statements).
_HOST_LEASES = """
SELECT DISTINCT ON (hostname) hostname, address
  FROM (SELECT m.hostname, host(l.ip) AS address, true AS by_boot_mac, l.updated_at
          FROM machines m
          JOIN leases l ON l.mac = m.boot_mac
         WHERE l.state = 'bound' AND l.expires_at > now()
        UNION ALL
        SELECT m.hostname, host(l.ip), l.mac = m.boot_mac, l.updated_at
          FROM machines m
          JOIN machine_interfaces mi ON mi.system_id = m.system_id
          JOIN leases l ON l.mac = mi.mac
         WHERE l.state = 'bound' AND l.expires_at > now()) AS candidates
 ORDER BY hostname, by_boot_mac DESC, updated_at DESC
"""


def subnet_name(cidr: IPv4Network, domain: str) -> str:
    """``10.20.0.0/24`` in ``maas-internal`` is ``10-20-0-0-24.maas-internal``."""
    return f"{str(cidr).replace('.', '-').replace('/', '-')}.{domain}"


async def internal_domain(conn: DbConnection) -> str:
    """The ``dns_internal_domain`` region setting (a JSON string), or the default."""
    value = await conn.fetchval("SELECT value #>> '{}' FROM region_settings WHERE name = 'dns_internal_domain'")
    if isinstance(value, str) and _VALID_NAME.match(value.strip(".")):
        return value.strip(".").lower()
    return DEFAULT_INTERNAL_DOMAIN


async def build_zone(conn: DbConnection) -> DnsZone:
    """One consistent read (one transaction, one ``now()``) of everything the zone holds."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        domain = await internal_domain(conn)
        subnet_rows = await conn.fetch(_SUBNET_RACKS, RackServiceKind.PROXY.value, HEALTHY_WITHIN_INTERVALS)
        host_rows = await conn.fetch(_HOST_LEASES)
        serial = await conn.fetchval("SELECT extract(epoch FROM now())::bigint % 4294967296")
    subnets = [
        SubnetName(
            name=subnet_name(row["cidr"], domain),
            cidr=row["cidr"],
            rack_addresses=[IPv4Address(str(address)) for address in row["rack_addresses"]],
        )
        for row in subnet_rows
    ]
    hosts = [
        HostRecord(hostname=row["hostname"].lower(), address=IPv4Address(row["address"]))
        for row in host_rows
        if _VALID_NAME.match(row["hostname"])
    ]
    return DnsZone(domain=domain, subnets=subnets, hosts=hosts, serial=serial)


class DnsZones:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database

    async def zone(self, query: DnsZoneQuery) -> DnsZone:
        async with self.database.connection() as conn:
            zone = await build_zone(conn)
        log.debug("dns.zone_built", rack_id=query.rack_id, subnets=len(zone.subnets), hosts=len(zone.hosts))
        return zone


def routes(ctx: RegionContext) -> list[Route]:
    return [(DNS_ZONE, DnsZones(ctx).zone)]
