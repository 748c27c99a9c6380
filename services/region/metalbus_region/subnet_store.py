"""What the region keeps about subnets in PostgreSQL: create, update, list, select by address, reservations, and
which subnets a rack serves."""

from ipaddress import IPv4Address

import asyncpg

from metalbus.contracts.errors import BadRequest, Conflict
from metalbus.contracts.leases import Subnet, SubnetCreate
from metalbus.db.pool import DbConnection

SUBNET_COLUMNS = "subnet_id, cidr, gateway, dns_servers, dynamic_start, dynamic_end, managed, lease_time_s, domain"


def serves_subnet(service: str, subnet: str) -> str:
    """SQL condition: the rack_services row ``service`` has an interface address inside the managed subnets row
    ``subnet``. The one rule for "a rack serves a subnet": the rack snapshot and the rack list both use it."""
    return f"""{subnet}.managed AND EXISTS (
        SELECT 1 FROM unnest({service}.interfaces) AS interface (address)
         WHERE {subnet}.cidr >>= host(interface.address)::inet)"""


def subnet_from_row(row: asyncpg.Record) -> Subnet:
    return Subnet(
        subnet_id=row["subnet_id"],
        cidr=row["cidr"],
        gateway=row["gateway"],
        dns_servers=list(row["dns_servers"]),
        dynamic_start=row["dynamic_start"],
        dynamic_end=row["dynamic_end"],
        managed=row["managed"],
        lease_time_s=row["lease_time_s"],
        domain=row["domain"],
    )


async def insert_subnet(conn: DbConnection, create: SubnetCreate) -> Subnet:
    """Add the subnet and its reserved addresses; Conflict if its CIDR equals or overlaps another's."""
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"""
                INSERT INTO subnets (cidr, gateway, dns_servers, dynamic_start, dynamic_end, managed,
                                     lease_time_s, domain)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING {SUBNET_COLUMNS}
                """,
                create.cidr,
                create.gateway,
                create.dns_servers,
                create.dynamic_start,
                create.dynamic_end,
                create.managed,
                create.lease_time_s,
                create.domain,
            )
            assert row is not None
            await conn.executemany(
                "INSERT INTO reserved_ips (subnet_id, ip) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [(row["subnet_id"], ip) for ip in create.reserved],
            )
    except (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError) as error:
        raise Conflict(f"subnet {create.cidr} equals or overlaps an existing subnet") from error
    return subnet_from_row(row)


async def subnet_for_update(conn: DbConnection, subnet_id: int) -> Subnet | None:
    """The subnet, locked until the caller's transaction ends; None if there is no such subnet."""
    row = await conn.fetchrow(f"SELECT {SUBNET_COLUMNS} FROM subnets WHERE subnet_id = $1 FOR UPDATE", subnet_id)
    return None if row is None else subnet_from_row(row)


async def update_subnet(conn: DbConnection, subnet_id: int, settings: SubnetCreate) -> Subnet:
    """Give the subnet these (already validated) gateway, DNS servers, dynamic range, managed flag and lease time;
    its CIDR, domain and reservations stay."""
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE subnets SET gateway = $2, dns_servers = $3, dynamic_start = $4, dynamic_end = $5, managed = $6,
                               lease_time_s = $7
             WHERE subnet_id = $1
            RETURNING {SUBNET_COLUMNS}
            """,
            subnet_id,
            settings.gateway,
            settings.dns_servers,
            settings.dynamic_start,
            settings.dynamic_end,
            settings.managed,
            settings.lease_time_s,
        )
    except asyncpg.CheckViolationError as error:
        raise BadRequest(
            f"subnet {settings.cidr}: the database refused the change ({error.constraint_name})"
        ) from error
    assert row is not None, "the caller holds the row lock on this subnet"
    return subnet_from_row(row)


async def list_subnets(conn: DbConnection) -> list[Subnet]:
    rows = await conn.fetch(f"SELECT {SUBNET_COLUMNS} FROM subnets ORDER BY subnet_id")
    return [subnet_from_row(row) for row in rows]


async def managed_subnet_containing(conn: DbConnection, address: IPv4Address) -> Subnet | None:
    """The managed subnet whose CIDR holds ``address`` (subnets never overlap, so at most one)."""
    row = await conn.fetchrow(
        f"SELECT {SUBNET_COLUMNS} FROM subnets WHERE managed AND cidr >>= $1::inet",
        address,
    )
    return None if row is None else subnet_from_row(row)


async def reserved_addresses(conn: DbConnection, subnet_ids: list[int]) -> dict[int, list[IPv4Address]]:
    """Reserved addresses per subnet id (every id asked for is present, maybe with an empty list)."""
    rows = await conn.fetch(
        "SELECT subnet_id, ip FROM reserved_ips WHERE subnet_id = ANY($1::bigint[]) ORDER BY subnet_id, ip",
        subnet_ids,
    )
    reserved: dict[int, list[IPv4Address]] = {subnet_id: [] for subnet_id in subnet_ids}
    for row in rows:
        reserved[row["subnet_id"]].append(row["ip"])
    return reserved


async def subnets_of_rack(conn: DbConnection, rack_id: str) -> list[Subnet]:
    """Managed subnets holding an address of one of the rack's reported interfaces (any of its services)."""
    rows = await conn.fetch(
        f"""
        SELECT {SUBNET_COLUMNS} FROM subnets s
         WHERE EXISTS (SELECT 1 FROM rack_services rs WHERE rs.rack_id = $1 AND {serves_subnet("rs", "s")})
         ORDER BY s.subnet_id
        """,
        rack_id,
    )
    return [subnet_from_row(row) for row in rows]


async def is_reserved(conn: DbConnection, subnet_id: int, ip: IPv4Address) -> bool:
    found = await conn.fetchval("SELECT 1 FROM reserved_ips WHERE subnet_id = $1 AND ip = $2::inet", subnet_id, ip)
    return found is not None
